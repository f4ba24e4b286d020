"""How to reach Kafka: one typed :class:`KafkaConnection`, its command-line options, and the
kafka-python keyword arguments it implies for producers, consumers and admin clients.

Every option has an environment variable (``--sasl-username`` <-> ``DIGITMATCH_SASL_USERNAME``),
so containers are configured without flags. The password is a :class:`~pydantic.SecretStr`: it
never appears in ``repr``, logs or ``--help``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from digitmatch.kafka.exceptions import InvalidConfiguration
from digitmatch.settings import add_model_options, values_from_args

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

DEFAULT_BOOTSTRAP = "localhost:9092"


class KafkaConnection(BaseModel):
    """Where the brokers are and how to authenticate to them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Each field is an option (digitmatch.settings: the description is its --help).
    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP, description="comma-separated host:port list")
    client_id: str = Field("digitmatch", description="client ID the brokers see")
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="transport security")
    sasl_mechanism: SaslMechanism | None = Field(None, description="SASL mechanism (SASL_* protocols)")
    sasl_username: str | None = Field(None, description="SASL username")
    # SecretStr keeps a password taken from the environment out of --help.
    sasl_password: SecretStr | None = Field(None, description="SASL password (prefer the variable)")
    ssl_cafile: Path | None = Field(None, description="CA bundle that verifies the brokers (PEM)")
    ssl_certfile: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    ssl_keyfile: Path | None = Field(None, description="client private key (PEM) for mutual TLS")
    request_timeout_ms: int = Field(30_000, gt=0, description="Kafka request timeout")

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("bootstrap servers must name at least one host:port")
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bootstrap server {server!r} is not host:port")
        return ",".join(servers)

    @model_validator(mode="after")
    def _consistent(self) -> "KafkaConnection":
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(f"{self.security_protocol} needs a SASL mechanism, username and password")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError(f"SASL settings are given but the security protocol is {self.security_protocol}")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        files = {"ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile, "ssl_keyfile": self.ssl_keyfile}
        if not tls and any(files.values()):
            raise ValueError(f"TLS files are given but the security protocol is {self.security_protocol}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("a TLS client certificate needs both ssl_certfile and ssl_keyfile")
        for name, path in files.items():
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name} {path} does not exist")
        return self

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, **fields: Any) -> "KafkaConnection":
        """Like the constructor, but raises :class:`InvalidConfiguration` with a one-line message."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            raise InvalidConfiguration(f"Kafka connection: {where + ': ' if where else ''}{message}") from None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "KafkaConnection":
        """The connection described by the options :func:`add_connection_options` added."""
        return cls.create(**values_from_args(cls, args))

    # ------------------------------------------------------------------ kafka-python kwargs

    def common_kwargs(self) -> dict[str, Any]:
        """Settings every kafka-python client takes: servers, identity, security."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            # kafka-python uses the "plain" username/password pair for PLAIN and for SCRAM.
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = str(value)
        return kwargs

    def producer_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """A durable producer: every record acknowledged by all in-sync replicas, no duplicates
        from retries, up to 5 requests in flight (the most idempotence keeps in order)."""
        kwargs = self.common_kwargs() | {
            "acks": "all",
            "enable_idempotence": True,
            "max_in_flight_requests_per_connection": 5,
            # A few milliseconds of lingering fills batches under load at a small latency cost.
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            # No compression: MFCC float32 mantissas are close to random bytes (gzip saves little on
            # them) and the CPU spent compressing competes with inference on small machines.
            # Pass compression_type="gzip" for slow links carrying mostly images.
            "compression_type": None,
        }
        return kwargs | overrides

    def consumer_kwargs(self, group_id: str | None = None, **overrides: Any) -> dict[str, Any]:
        """A consumer that commits explicitly and starts from the earliest offset of a new group."""
        kwargs = self.common_kwargs() | {
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
        }
        return kwargs | overrides

    def admin_kwargs(self, **overrides: Any) -> dict[str, Any]:
        return self.common_kwargs() | overrides


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Add the connection options (each with its ``DIGITMATCH_*`` variable) to ``parser``, one per
    field of :class:`KafkaConnection`; their bounds and consistency are checked by :meth:`create`."""
    add_model_options(parser, KafkaConnection, bounds=False)


# librdkafka's own log lines (connection failures, ...) go to Python logging under this name
# instead of straight to stderr (digitmatch.kafka.librdkafka).
CLIENT_LOGGER = "digitmatch.kafka.librdkafka.client"


def quiet_client_logs(level: int = logging.WARNING) -> None:
    """kafka-python logs every connection at INFO, and so does librdkafka under
    :data:`CLIENT_LOGGER`; keep our own INFO logs readable."""
    for name in ("kafka", CLIENT_LOGGER):
        logging.getLogger(name).setLevel(level)
