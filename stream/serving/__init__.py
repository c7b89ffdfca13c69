"""The engine for many conversations: a pool of warm sessions over a shared turn log, the
HTTP service (Ray Serve) that holds it, the remote stage an edge sends its turns through,
and the MQTT bridge. The model itself (session, cache, attention, backends) is
`stream.engine`, one floor down; nothing there imports from here."""
