"""The judge of a canary: is the candidate worse than the baseline, on the
same traffic, at the same time, on the same machine?

Every ``interval`` it reads both versions' figures since the canary started
(``metrics``: exact counts, sampled latency histograms) and tests:

- **crashes**: a candidate that crashed its isolated worker, or whose worker
  stopped, while the baseline had none in the same window, fails at once;
  otherwise crashes count as errors.  (An in-process crash takes the host down:
  that cannot be judged, and it is what isolation is for.)
- **errors**: calls that raised (crash, timeout, stopped, other; not a bad
  argument, which the caller's input decides and both versions refuse alike)
  plus failed host-service calls, per call: a one-sided two-proportion test
  that the candidate's rate is higher, Fisher's exact test (exact at the
  small counts a canary starts with, where a normal approximation such as
  Agresti-Caffo needs several times more errors to reach the same level:
  3 errors in a 5 % share against none in the rest are p=1.2e-4 exactly);
- **latency**: a one-sided Mann-Whitney U test (ties corrected, on the
  histograms' buckets) that the candidate is slower than the baseline made
  ``tolerance`` slower: only a regression larger than the tolerance fails
  (``cold_tolerance``, 3x, for a candidate taking too few calls to run warm).

Each look tests at ``(1 - confidence) / looks``, where ``looks`` is the number
of looks in the bake (Bonferroni): the judge looks many times, and a test at
98 % on every look would abort many good canaries over a bake (measured in
``benchmarks/bench_canary.py``: A/A canaries).  A test runs only once each
side has ``min_calls`` calls (latency: ``min_samples`` sampled calls).  After
``bake`` seconds without a failed test (and enough calls), the candidate
passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import metrics

MAX_BAKE = 7 * 86400.0  # a week: past it, the per-look confidence means nothing

#: Error kinds the judge counts (``metrics.ERROR_KINDS`` less "argument").
_JUDGED = tuple(i for i, k in enumerate(metrics.ERROR_KINDS) if k != "argument")
_CRASH = metrics.ERROR_KINDS.index("crash")


@dataclass(frozen=True)
class Judge:
    """How a canary is judged (``host.canary(..., judge=Judge(...))``).

    ``confidence`` and ``tolerance`` are Kayenta's knobs (its defaults are 98 %
    and 25 %).  The tolerance here is 10 %: with 25 %, a build 25 % slower sits
    on the edge and passes half the time, and a host that sees both versions
    side by side, on one machine, at the same moment, can afford a tighter
    one (the A/A canaries of ``benchmarks/bench_canary.py`` hold it).
    ``abort``/``promote`` say whether a verdict acts by itself; off, it is
    reported (``canary.verdict``) and an operator decides."""

    confidence: float = 0.98
    tolerance: float = 0.10  # a latency regression smaller than this is not one
    bake: float = 30.0  # seconds without regression before the candidate passes
    interval: float = 0.5  # seconds between looks
    min_calls: int = 100  # calls per side before the error test
    min_samples: int = 50  # sampled latencies per side before the latency test
    abort: bool = True  # abort by itself on a regression
    promote: bool = True  # promote by itself after the bake
    # without a baseline to compare with (a canary of every key on a fresh baseline): the
    # highest error rate the candidate may have
    max_error_rate: float = 0.01
    # the candidate's calls a second below which its calls run cold (see warm()): its
    # latency is then held only to the baseline made 1 + cold_tolerance slower (3x)
    min_latency_rate: float = 500.0
    cold_tolerance: float = 2.0

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"Judge(confidence={self.confidence!r}): between 0.5 and 1")
        if not 0 <= self.tolerance <= 10:
            raise ValueError(f"Judge(tolerance={self.tolerance!r}): between 0 and 10")
        if not (0 < self.bake <= MAX_BAKE and 0.01 <= self.interval <= self.bake):
            raise ValueError(
                f"Judge(bake={self.bake!r}, interval={self.interval!r}): "
                f"0.01 <= interval <= bake <= {MAX_BAKE:g} s"
            )
        if not 0 <= self.cold_tolerance <= 100:
            raise ValueError(f"Judge(cold_tolerance={self.cold_tolerance!r}): between 0 and 100")
        if not 0 <= self.min_latency_rate <= 1e9:
            raise ValueError(f"Judge(min_latency_rate={self.min_latency_rate!r}): 0 to 1e9")
        if not 0 < self.max_error_rate <= 1:
            raise ValueError(f"Judge(max_error_rate={self.max_error_rate!r}): in (0, 1]")
        if self.min_calls < 1 or self.min_samples < 1:
            raise ValueError("Judge: min_calls and min_samples are >= 1")

    @property
    def looks(self) -> int:
        return max(1, math.ceil(self.bake / self.interval))

    @property
    def alpha(self) -> float:
        """The significance level of each look."""
        return (1 - self.confidence) / self.looks


@dataclass
class Side:
    """One version's figures in the canary's window."""

    calls: int = 0
    errors: int = 0  # judged kinds
    crashes: int = 0
    service_errors: int = 0
    hist: dict[int, int] = field(default_factory=dict)
    stopped: bool = False  # an isolated worker that stopped restarting

    @property
    def failed(self) -> int:
        """Calls that failed: a call that raised or whose service calls failed,
        at most once each (a call may fail several service calls)."""
        return min(self.errors + self.service_errors, self.calls)

    def rate(self) -> float:
        return self.failed / self.calls if self.calls else 0.0

    def as_dict(self) -> dict[str, Any]:
        p50, p99 = metrics.quantiles(self.hist)
        return {
            "calls": self.calls,
            "errors": self.errors,
            "crashes": self.crashes,
            "service_errors": self.service_errors,
            "error_rate": self.rate(),
            "sampled": sum(self.hist.values()),
            "p50_us": p50,
            "p99_us": p99,
        }


def read(version: Any) -> Side:
    """A version's figures now (all exports added up)."""
    side = Side()
    for row in version.gate.snapshot():
        calls, _, errs, _, _, hist = row
        side.calls += calls
        side.errors += sum(errs[i] for i in _JUDGED)
        side.crashes += errs[_CRASH]
        for i, c in hist:
            side.hist[i] = side.hist.get(i, 0) + c
    imports = version.image.imports
    side.service_errors = imports.errors if imports is not None else 0
    proxy = version.image.process
    side.stopped = proxy is not None and proxy.state == "stopped"
    return side


def since(now: Side, start: Side) -> Side:
    """The figures of the window from ``start`` to ``now``."""
    hist = {i: c - start.hist.get(i, 0) for i, c in now.hist.items()}
    return Side(
        calls=now.calls - start.calls,
        errors=now.errors - start.errors,
        crashes=now.crashes - start.crashes,
        service_errors=now.service_errors - start.service_errors,
        hist={i: c for i, c in hist.items() if c > 0},
        stopped=now.stopped,
    )


@dataclass(frozen=True)
class Finding:
    """A failed test: the figure, both values, the test."""

    figure: str  # "crashes", "errors", "latency"
    text: str


def _p_upper(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def errors_test(cand: Side, base: Side) -> float:
    """One-sided p-value that the candidate's error rate is higher: Fisher's
    exact test, the probability that the candidate's share of all the failed
    calls is at least what it is, had the failures fallen on the calls at
    random (hypergeometric upper tail)."""
    return hypergeom_sf(cand.failed, cand.calls + base.calls, cand.failed + base.failed, cand.calls)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


WIDE = 1e6  # the variance past which the tail is taken from the normal (s.d. 1,000)


def hypergeom_sf(x: int, total: int, marked: int, drawn: int) -> float:
    """P(X >= x) where X counts the marked items among ``drawn`` items drawn
    without replacement from ``total`` of which ``marked`` are marked.

    Summed term by term from the nearer tail, stopping once the terms no
    longer change the sum: a few standard deviations, so it stays cheap at
    a million calls; past a standard deviation of 1,000 (millions of failed
    calls), the normal approximation with continuity correction, which is
    then good to many digits and costs nothing (an attacker timed 0.4 s of
    summing at 10**12 calls)."""
    lo, hi = max(0, drawn + marked - total), min(marked, drawn)
    if x <= lo:
        return 1.0
    if x > hi:
        return 0.0
    mean = drawn * marked / total
    var = mean * (total - marked) / total * (total - drawn) / max(total - 1, 1)
    if var > WIDE:  # thousands of failures a side: summing would cost seconds, the normal is exact
        return _p_upper((x - 0.5 - mean) / math.sqrt(var))

    def pmf(k: int) -> float:
        return math.exp(
            _log_comb(marked, k) + _log_comb(total - marked, drawn - k) - _log_comb(total, drawn)
        )

    def ratio(k: int) -> float:  # pmf(k + 1) / pmf(k)
        return (marked - k) * (drawn - k) / ((k + 1) * (total - marked - drawn + k + 1))

    upper = x >= mean  # sum the tail that holds x, or the complement's
    k = x if upper else x - 1
    term, acc = pmf(k), 0.0
    if term == 0.0:  # underflow: x lies so far out that the tail rounds to nothing
        return 0.0 if upper else 1.0
    for _ in range(1_000_000):
        acc += term
        if upper:
            if k >= hi:
                break
            term *= ratio(k)
            k += 1
        else:
            if k <= lo:
                break
            k -= 1
            term /= ratio(k)
        if term < acc * 1e-17:
            break
    return min(1.0, acc) if upper else max(0.0, 1.0 - acc)


def _inflated(hist: dict[int, int], factor: float) -> dict[int, int]:
    """The histogram of the same latencies made ``factor`` times longer (each
    bucket by its middle)."""
    out: dict[int, int] = {}
    for i, c in hist.items():
        lo, hi = metrics.LOWER[i], metrics.UPPER[i]
        mid = lo if hi == metrics.INF else (lo + hi) / 2
        j = metrics.bucket(int(mid * factor))
        out[j] = out.get(j, 0) + c
    return out


def latency_test(cand: dict[int, int], base: dict[int, int], tolerance: float) -> float:
    """One-sided p-value that the candidate is slower than the baseline made
    ``tolerance`` slower (Mann-Whitney U on the buckets, ties corrected)."""
    base = _inflated(base, 1 + tolerance)
    n1, n2 = sum(cand.values()), sum(base.values())
    if not n1 or not n2:
        return 1.0
    u = 0.0
    below = 0  # baseline values in lower buckets
    ties = 0.0
    for i in sorted(set(cand) | set(base)):
        c, b = cand.get(i, 0), base.get(i, 0)
        u += c * (below + 0.5 * b)
        below += b
        t = c + b
        ties += t**3 - t
    n = n1 + n2
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return 1.0
    return _p_upper((u - n1 * n2 / 2 - 0.5) / math.sqrt(var))


def _p(p: float) -> str:
    """A p-value as a person reads it (a float underflows to 0, which is not a p-value)."""
    return f"p={p:.2g}" if p >= 1e-300 else "p<1e-300"


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def _us(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} us"


def warm(cand: Side, judge: Judge, seconds: float) -> bool:
    """Whether the candidate takes enough calls for its latency to be judged
    with ``tolerance``: below ``min_latency_rate`` its calls run with cold
    caches (the baseline's, far more frequent, run warm), and a build whose
    calls take a microsecond read up to twice as slow (50 of 50 A/A hosts
    aborted at share 0.05 with 2,000 calls/s, 0 of 50 at share 1:
    ``bench_fleet_judged``); such a candidate is held to ``cold_tolerance``
    instead, so a gross regression still fails."""
    return seconds > 0 and cand.calls / seconds >= judge.min_latency_rate


def look(cand: Side, base: Side, judge: Judge, seconds: float) -> Finding | None:
    """The first test the candidate fails in this window of ``seconds``, or None."""
    if cand.stopped and not base.stopped:
        return Finding(
            "crashes", "the candidate's worker stopped (crash loop); the baseline's runs"
        )
    if cand.crashes and not base.crashes:
        return Finding(
            "crashes",
            f"{cand.crashes} crash(es) of the candidate's worker in {cand.calls:,} calls; "
            f"the baseline had none in {base.calls:,}",
        )
    alpha = judge.alpha
    lone = cand.calls >= judge.min_calls and base.calls < judge.min_calls
    if lone and cand.rate() > judge.max_error_rate:  # nothing to compare with: an absolute bar
        return Finding(
            "errors",
            f"error rate {_pct(cand.rate())} ({cand.failed:,} of {cand.calls:,} calls), over "
            f"Judge(max_error_rate={judge.max_error_rate:g}); the baseline had "
            f"{base.calls:,} calls to compare with",
        )
    if cand.calls >= judge.min_calls and base.calls >= judge.min_calls:
        p = errors_test(cand, base)
        if p < alpha:
            return Finding(
                "errors",
                f"error rate {_pct(cand.rate())} ({cand.failed:,} of {cand.calls:,} calls) vs "
                f"baseline {_pct(base.rate())} ({base.failed:,} of {base.calls:,}): "
                f"two-proportion test (Fisher's exact), {_p(p)} < {alpha:.2g}",
            )
    if (
        sum(cand.hist.values()) >= judge.min_samples
        and sum(base.hist.values()) >= judge.min_samples
    ):
        hot = warm(cand, judge, seconds)
        tolerance = judge.tolerance if hot else max(judge.tolerance, judge.cold_tolerance)
        p = latency_test(cand.hist, base.hist, tolerance)
        if p < alpha:
            c50, c99 = metrics.quantiles(cand.hist)
            b50, b99 = metrics.quantiles(base.hist)
            return Finding(
                "latency",
                f"latency p50 {_us(c50)}, p99 {_us(c99)} vs baseline p50 {_us(b50)}, "
                f"p99 {_us(b99)}: Mann-Whitney U, slower than the baseline "
                f"+{tolerance:.0%}{'' if hot else ' (cold calls: ' + _rate(cand, seconds) + ')'} "
                f"at {_p(p)} < {alpha:.2g}",
            )
    return None


def _rate(cand: Side, seconds: float) -> str:
    return f"{cand.calls / seconds if seconds > 0 else 0.0:,.0f} calls/s"


def untested(cand: Side, base: Side, judge: Judge, seconds: float) -> list[str]:
    """The tests that have not had enough data on some side yet (latency
    too cold to judge is not waited for: ``cold``)."""
    out = []
    if min(cand.calls, base.calls) < judge.min_calls:
        out.append(f"errors (needs {judge.min_calls:,} calls a side)")
    cold = not warm(cand, judge, seconds)
    if not cold and min(sum(cand.hist.values()), sum(base.hist.values())) < judge.min_samples:
        out.append(f"latency (needs {judge.min_samples:,} timed calls a side)")
    return out


def cold(cand: Side, judge: Judge, seconds: float) -> str:
    """Why latency is not judged in this window, or ''."""
    if warm(cand, judge, seconds):
        return ""
    return (
        f"latency judged only against the baseline made "
        f"{1 + max(judge.tolerance, judge.cold_tolerance):g}x slower: the candidate took "
        f"{_rate(cand, seconds)}, under Judge(min_latency_rate={judge.min_latency_rate:g}), "
        f"too few for warm caches"
    )


def summary(cand: Side, base: Side) -> str:
    """Both sides' figures, for a verdict."""
    c50, c99 = metrics.quantiles(cand.hist)
    b50, b99 = metrics.quantiles(base.hist)
    return (
        f"{cand.calls:,} calls vs {base.calls:,}; error rate {_pct(cand.rate())} vs "
        f"{_pct(base.rate())}; p50 {_us(c50)} vs {_us(b50)}; p99 {_us(c99)} vs {_us(b99)}"
    )
