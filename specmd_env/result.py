"""What a replay measured, in one flat record (attributes and ``as_dict()``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Result:
    """Metrics of one replay. Counts are over layer-event accesses (one per expert a layer event needs;
    ``token_*`` weight each by the tokens routed to it).

    hits + misses = accesses; misses = compulsory + capacity + collision misses. A *late prefetch
    miss* is a miss whose expert was already in flight (no new transfer). prefetches_issued =
    used + wasted + still resident at the end.
    """

    eviction: str
    prefetch: str
    model: str
    hardware: str
    capacity_slots: int
    accesses: int
    hits: int
    misses: int
    compulsory_misses: int
    capacity_misses: int
    collision_misses: int
    late_prefetch_misses: int
    prefetches_issued: int
    prefetches_used: int
    prefetches_wasted: int
    prefetches_skipped: int
    prefetches_resident_at_end: int
    transfers: int
    bypassed: int
    bytes_moved: int
    stall_seconds: float
    dropped_experts: int
    evictions: int
    decisions: int
    token_accesses: int
    total_seconds: float
    prompt_tokens: int
    output_tokens: int
    gate_mass: float                  # summed gate weight of every access (uniform 1/k per token if unknown)
    gate_mass_dropped: float          # ... of experts skipped (miss='drop', the cascade's skips)
    gate_mass_substituted: float      # ... of experts replaced by a resident one (substitution)
    gate_mass_low_precision: float    # ... of experts served from a low-precision copy
    low_precision_transfers: int
    substituted_experts: int
    cpu_experts: int                  # experts computed on the CPU instead of fetched
    cpu_seconds: float
    demand_wait_seconds: float        # time demand loads waited for the copy engine (queueing)
    ssd_reads: int                    # experts read from the SSD into host memory (two tiers)
    ttft_seconds: np.ndarray = field(repr=False)     # per request: arrival (or its batch group's start) to first token
    tpot_seconds: np.ndarray = field(repr=False)     # per request: mean time per output token after the first
    itl_seconds: np.ndarray = field(repr=False)      # every gap between a request's consecutive tokens

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else float("nan")

    @property
    def token_hit_rate(self) -> float:
        """Hit rate of the per-token request stream: every token's use of an expert is an access, and
        only the access that finds the expert missing misses (the other tokens of that layer event
        share its transfer). In a prefill an expert used by 200 tokens misses at most once in 200.
        Papers that quote per-token hit rates mean this one; ``hit_rate`` is the stricter per-event one."""
        return 1.0 - self.misses / self.token_accesses if self.token_accesses else float("nan")

    @property
    def prefetch_covered_rate(self) -> float:
        """Accesses that found their expert resident or already on its way (hits plus late prefetch
        misses), over accesses: how much of the demand the cache and the prefetcher together covered."""
        return (self.hits + self.late_prefetch_misses) / self.accesses if self.accesses else float("nan")

    @property
    def degraded_mass_fraction(self) -> float:
        """The quality proxy: the share of gate mass that was dropped, substituted or served in low
        precision (0 = every expert computed as the router chose it). A handler that drops work pays here."""
        lost = self.gate_mass_dropped + self.gate_mass_substituted + self.gate_mass_low_precision
        return lost / self.gate_mass if self.gate_mass else float("nan")

    @property
    def mean_ttft_seconds(self) -> float:
        return float(np.mean(self.ttft_seconds)) if len(self.ttft_seconds) else float("nan")

    @property
    def mean_tpot_seconds(self) -> float:
        valid = self.tpot_seconds[~np.isnan(self.tpot_seconds)]
        return float(np.mean(valid)) if len(valid) else float("nan")

    def percentile(self, what: str, q: float) -> float:
        """The q-th percentile (0-100) of 'ttft', 'tpot' or 'itl' seconds (NaN where undefined)."""
        values = {"ttft": self.ttft_seconds, "tpot": self.tpot_seconds, "itl": self.itl_seconds}[what]
        values = values[~np.isnan(values)]
        return float(np.percentile(values, q)) if len(values) else float("nan")

    def goodput(self, ttft_slo: float, tpot_slo: float) -> float:
        """Requests per second of replayed time that met both service-level objectives (a request with
        one token only has no TPOT and meets that one)."""
        tpot = np.nan_to_num(self.tpot_seconds, nan=0.0)
        met = (self.ttft_seconds <= ttft_slo) & (tpot <= tpot_slo)
        return float(met.sum() / self.total_seconds) if self.total_seconds else float("nan")

    @property
    def tokens_per_second(self) -> float:
        """All tokens processed (prompt and output) per second of replayed time."""
        return (self.prompt_tokens + self.output_tokens) / self.total_seconds if self.total_seconds else float("nan")

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.total_seconds if self.total_seconds else float("nan")

    def as_dict(self) -> dict:
        """Scalars only (per-request arrays summarised by their means), ready for a table row."""
        row = {k: v for k, v in asdict(self).items() if not isinstance(v, np.ndarray)}
        for what in ("ttft", "tpot", "itl"):
            for q in (50, 90, 99):
                row[f"p{q}_{what}_seconds"] = self.percentile(what, q)
        row.update(hit_rate=self.hit_rate, token_hit_rate=self.token_hit_rate,
                   prefetch_covered_rate=self.prefetch_covered_rate, degraded_mass_fraction=self.degraded_mass_fraction,
                   mean_ttft_seconds=self.mean_ttft_seconds,
                   mean_tpot_seconds=self.mean_tpot_seconds, tokens_per_second=self.tokens_per_second,
                   output_tokens_per_second=self.output_tokens_per_second)
        return row
