"""A reproducible synthetic conversation: real faces, synthetic voices, known truth.

`python -m stream.demo` writes `examples/demo.mp4` with its transcript and
ground truth. The output is committed, so neither the demo nor the tests need
espeak-ng; the generator is kept so the clip can be rebuilt and varied.
"""
