"""Publishing the two halves of a pair to ``pairs.in``.

:class:`SpokenProducer` sends a recording (audio samples, turned into MFCC frames by
:func:`digitmatch.features.mfcc`, or frames computed beforehand; or with :meth:`SpokenProducer.send_pcm16`
the int16 samples themselves, whose features the matcher computes); :class:`WrittenProducer` sends a
28x28 image. Both encode with :mod:`digitmatch.wire`, key the record by the pair ID (so both
halves land in the same partition), stamp ``dm-produced-ms`` and return kafka-python's future.
:class:`PairProducer` holds one durable ``KafkaProducer`` (acks=all, idempotent) shared by both.
"""

from __future__ import annotations


import numpy as np
from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from digitmatch import wire
from digitmatch.features import DEFAULT_PARAMS, FeatureParams, mfcc
from digitmatch.kafka.configuration import KafkaConnection


def open_producer(conn: KafkaConnection, **overrides) -> KafkaProducer:
    """A ``KafkaProducer`` with the project's durable settings (see ``producer_kwargs``)."""
    return KafkaProducer(**conn.producer_kwargs(**overrides))


class _HalfProducer:
    def __init__(self, producer: KafkaConnection | KafkaProducer, topic: str = wire.TOPIC_PAIRS):
        self._owned = isinstance(producer, KafkaConnection)
        self.producer = open_producer(producer) if self._owned else producer
        self.topic = topic

    def _send(self, record: tuple[bytes, bytes, list[tuple[str, bytes]]]) -> FutureRecordMetadata:
        key, value, headers = record
        return self.producer.send(self.topic, key=key, value=value, headers=headers)

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush; close the Kafka producer too if this object created it."""
        self.producer.flush(timeout)
        if self._owned:
            self.producer.close(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SpokenProducer(_HalfProducer):
    """Sends spoken halves. ``features`` must be the served model's ``FeatureParams``."""

    def __init__(
        self,
        producer: KafkaConnection | KafkaProducer,
        topic: str = wire.TOPIC_PAIRS,
        features: FeatureParams = DEFAULT_PARAMS,
    ):
        super().__init__(producer, topic)
        self.features = features

    def send(
        self,
        pair_id: str,
        audio_or_mfcc: np.ndarray,
        *,
        sample_rate: int | None = None,
        digit: int | None = None,
        produced_ms: int | None = None,
    ) -> FutureRecordMetadata:
        """Send a recording: 1-D audio samples with ``sample_rate``, or (frames, 13) MFCC frames.

        Raises :class:`~digitmatch.features.FeatureError` for unusable audio and
        :class:`~digitmatch.wire.InvalidMessage` for frames or a pair ID the matcher would reject.
        """
        data = np.asarray(audio_or_mfcc)
        if data.ndim == 1:
            if sample_rate is None:
                raise ValueError("audio samples need sample_rate (or pass (frames, 13) MFCC frames)")
            frames = mfcc(data, sample_rate, self.features)
        elif data.ndim == 2:
            if sample_rate is not None:
                raise ValueError("sample_rate is only meaningful for 1-D audio, not MFCC frames")
            frames = data
        else:
            raise ValueError(f"expected 1-D audio or (frames, 13) MFCC frames, got shape {data.shape}")
        record = wire.encode_spoken(pair_id, frames, digit, wire.now_ms() if produced_ms is None else produced_ms)
        return self._send(record)

    def send_pcm16(
        self,
        pair_id: str,
        samples: np.ndarray,
        sample_rate: int,
        *,
        digit: int | None = None,
        produced_ms: int | None = None,
    ) -> FutureRecordMetadata:
        """Send the recording itself (``dm-encoding: pcm16``): mono int16 ``samples`` at
        ``sample_rate`` (one of ``wire.PCM_SAMPLE_RATES``, at most ``wire.MAX_PCM_SECONDS``). The
        matcher computes the features with the served model's parameters (``features`` is unused).

        Raises :class:`~digitmatch.wire.InvalidMessage` for samples the matcher would reject."""
        record = wire.encode_spoken_pcm16(pair_id, np.asarray(samples), sample_rate, digit,
                                          wire.now_ms() if produced_ms is None else produced_ms)
        return self._send(record)


class WrittenProducer(_HalfProducer):
    """Sends written halves: (28, 28) uint8 images, 0 = background."""

    def send(
        self, pair_id: str, image: np.ndarray, digit: int | None = None, *, produced_ms: int | None = None
    ) -> FutureRecordMetadata:
        record = wire.encode_written(pair_id, image, digit, wire.now_ms() if produced_ms is None else produced_ms)
        return self._send(record)


class PairProducer:
    """One ``KafkaProducer`` shared by a :class:`SpokenProducer` (``.spoken``) and a
    :class:`WrittenProducer` (``.written``)."""

    def __init__(
        self,
        conn: KafkaConnection,
        topic: str = wire.TOPIC_PAIRS,
        features: FeatureParams = DEFAULT_PARAMS,
        **producer_overrides,
    ):
        self.producer = open_producer(conn, **producer_overrides)
        self.spoken = SpokenProducer(self.producer, topic, features)
        self.written = WrittenProducer(self.producer, topic)

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        try:
            self.producer.flush(timeout)
        finally:
            self.producer.close(timeout)

    def __enter__(self) -> "PairProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
