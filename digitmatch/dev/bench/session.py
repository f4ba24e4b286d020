"""What every benchmark mode shares: the embedded broker, the pairs (built once from the held-out
data and pre-encoded), the model loaded in this process, and the matcher processes."""

from __future__ import annotations

import logging
import shutil
import tempfile
from functools import cached_property
from pathlib import Path

from digitmatch.dev.bench.pipeline import PipelineBench
from digitmatch.dev.bench.records import RecordPool
from digitmatch.dev.broker import EmbeddedBroker, new_broker
from digitmatch.producer.load import PairSet, build_pairs, model_features

log = logging.getLogger(__name__)


class BenchSession:
    def __init__(self, *, model: Path, data_dir: Path | None, pool_pairs: int, partitions: int = 4,
                 keep_logs: bool = False, threads: tuple[int, int] = (1, 0), engine: str = "tansu",
                 processing_guarantee: str = "at-least-once"):
        """``threads``: TensorFlow's (intra-op, inter-op) CPU threads in this process (model alone,
        naive consumer) and in the matchers it starts, so that all of them run the model alike."""
        from digitmatch.model.serving import set_cpu_threads

        self.threads = set_cpu_threads(*threads)
        self.matcher_defaults = {"intra_op_threads": threads[0], "inter_op_threads": threads[1],
                                 "processing_guarantee": processing_guarantee}
        self.engine = engine
        self.model_path = Path(model)
        self.data_dir = data_dir
        self.pool_pairs = pool_pairs
        self.partitions = partitions
        self.keep_logs = keep_logs
        self.log_dir = Path(tempfile.mkdtemp(prefix="digitmatch-bench-"))
        self._broker: EmbeddedBroker | None = None
        self._pipeline: PipelineBench | None = None
        self.failed = False

    @cached_property
    def pairs(self) -> PairSet:
        from digitmatch.model.serving import resolve

        _, version_dir = resolve(self.model_path)
        pairs = build_pairs(self.pool_pairs, data_dir=self.data_dir, features=model_features(version_dir), run_id="pool")
        log.info("built %d pairs from %s", len(pairs), pairs.source)
        return pairs

    @cached_property
    def pool(self) -> RecordPool:
        return RecordPool.from_pairs(self.pairs)

    @cached_property
    def model(self):
        from digitmatch.consumer.models import warm_up
        from digitmatch.model.serving import ServingModel

        model = ServingModel.load(self.model_path)
        warm_up(model)
        return model

    @cached_property
    def cheap_model_path(self) -> Path:
        """The trivially cheap SavedModel of ``bench ceiling`` (digitmatch/dev/bench/cheap_model.py),
        exported into this session's directory with the features of the model benchmarked."""
        from digitmatch.dev.bench.cheap_model import export_cheap
        from digitmatch.model.serving import read_metadata, resolve
        from digitmatch.features import FeatureParams

        _, version_dir = resolve(self.model_path)
        meta = read_metadata(version_dir)
        root = self.log_dir / "cheap-model" / "digitmatch-cheap"
        export_cheap(root, FeatureParams(**meta["features"]), stands_in_for=f"{meta.get('name')} v{meta.get('version')}")
        return root

    @property
    def broker(self) -> EmbeddedBroker:
        if self._broker is None:
            self._broker = new_broker(self.engine, partitions=self.partitions,
                                      log_path=self.log_dir / "broker.log").start()
        return self._broker

    @property
    def pipeline(self) -> PipelineBench:
        if self._pipeline is None:
            self._pipeline = PipelineBench(self.broker, lambda: self.pool, model=self.model_path, log_dir=self.log_dir,
                                           partitions=self.partitions, matcher_defaults=self.matcher_defaults)
        return self._pipeline

    def close(self) -> None:
        try:
            if self._pipeline is not None:
                self._pipeline.close()
        finally:
            if self._broker is not None:
                self._broker.stop()
            if self.keep_logs or self.failed:
                log.info("logs kept in %s", self.log_dir)
            else:
                shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> "BenchSession":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.failed = exc_type is not None
        self.close()
