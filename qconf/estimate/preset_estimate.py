"""One preset's estimate: what `qconf list presets --fits` and the README table show, computed
(qconf.estimate.presets) or read back from a store (qconf.estimate.preset_cache)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PresetEstimate:
    preset: str
    source: str
    bytes_unquantized: int | None  # None: no snapshot for the model
    bytes: int | None
    load_peak_bytes: int | None
    missing: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "preset": self.preset,
            "model": self.source,
            "bytes_unquantized": self.bytes_unquantized,
            "bytes": self.bytes,
            "load_peak_bytes": self.load_peak_bytes,
            **({"missing": self.missing} if self.missing else {}),
        }

    def loads_in(self, budget: int) -> bool:
        """Whether loading it fits `budget` bytes: its peak while loading (which is never below
        its weights) is at most that."""
        return self.load_peak_bytes is not None and self.load_peak_bytes <= budget

    def over_by_peak(self, budget: int) -> bool:
        """Whether its weights fit `budget` but its peak while loading does not."""
        return self.bytes is not None and self.bytes <= budget and not self.loads_in(budget)
