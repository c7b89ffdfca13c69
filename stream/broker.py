"""How every part of socialstream reaches an MQTT broker: one config, one client.

The sink (events out), the inbox (transcript lines and control in) and the
`subscribe` command all connect through `mqtt_client`, so the address, the
user and password, TLS and its certificates never differ between them.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field

from stream.errors import ConfigError


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(None, description="mqtt://[user@]host:port or mqtts://...; null: off")
    prefix: str = Field("socialstream", min_length=1, description="topic prefix")
    password_env: str = Field("SOCIALSTREAM_MQTT_PASSWORD",
                              description="environment variable holding the password")
    ca_file: Path | None = Field(None, description="CA bundle for mqtts:// (default: system)")
    cert_file: Path | None = Field(None, description="client certificate for mqtts://")
    key_file: Path | None = Field(None, description="client key for mqtts://")
    spool_dir: Path | None = Field(
        None, description="where undelivered events wait, one file per session "
        "(null: ~/.cache/socialstream/spool)")
    spool_max: int = Field(100_000, ge=1, description="most events kept; the oldest go first")
    reconnect_min_s: float = Field(0.5, gt=0, description="first reconnect delay")
    reconnect_max_s: float = Field(10.0, gt=0, description="longest reconnect delay")
    drain_timeout_s: float = Field(10.0, ge=0, description="wait at exit for the spool to empty")
    speaker_rate_hz: float = Field(5.0, gt=0, description="most speaker messages per second")


def broker_address(url: str) -> tuple[str, int, str | None, bool]:
    """host, port, user and TLS flag from `mqtt://[user@]host:port` (or `mqtts://`)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"{url}: not an MQTT URL; use mqtt://[user@]host:port")
    if parts.password:
        raise ConfigError("put the MQTT password in the environment (mqtt.password_env), "
                          "not in the URL")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"{url}: bad port") from exc
    return parts.hostname, port, parts.username, tls


def mqtt_client(config: MqttConfig, **options: Any) -> aiomqtt.Client:
    """A client for the configured broker; `options` add what only one user needs (a client
    id, a Last Will, a keepalive)."""
    if config.url is None:
        raise ConfigError("mqtt.url is not set")
    host, port, user, tls = broker_address(config.url)
    return aiomqtt.Client(
        host, port, username=user,
        password=os.environ.get(config.password_env) if user else None,
        tls_context=tls_context(config) if tls else None, timeout=10, **options)


def tls_context(config: MqttConfig) -> ssl.SSLContext:
    """Verifies the broker against `ca_file` (else the system's CAs); presents the client
    certificate when one is configured."""
    try:
        context = ssl.create_default_context(cafile=config.ca_file)
        if config.cert_file is not None:
            context.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"MQTT TLS files (mqtt.ca_file, mqtt.cert_file, mqtt.key_file): "
                          f"{exc}") from exc
    return context
