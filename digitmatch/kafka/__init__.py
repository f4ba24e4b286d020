"""Kafka plumbing shared by the producer, the matcher, the demo and the tests:
:mod:`.configuration` (connection + SASL/TLS -> kafka-python kwargs), :mod:`.clients` and
:mod:`.librdkafka` (the matcher's client library), :mod:`.admin` (waiting for a broker, creating
topics), :mod:`.reader` (reading verdicts and dead letters back), :mod:`.exceptions`."""
