"""Analysis of the live transcript, behind the :class:`Analyzer` port.

The server's analysis loop calls ``analyze`` with the recent finals when new ones arrived,
each run bounded by a timeout, and sends the result as ``analysis_update``.
:class:`KeywordAnalyzer`, the default, counts content words (keywords) and recurring word
pairs (topics); it is cheap, pure and deterministic.
"""

from __future__ import annotations

import abc
import collections
import itertools
import re
from collections.abc import Sequence

import attrs

from echopanel.protocol import TranscriptEntry

__all__ = ["AnalysisResult", "Analyzer", "KeywordAnalyzer"]

_WORD = re.compile(r"[a-z][a-z'\-]{2,}")
_STOPWORDS = frozenset(
    """
    about above after again against all also and any are because been before being below
    between both but can could did does doing down during each few for from further had
    has have having her here hers herself him himself his how into its itself just like
    more most much myself nor not now off once only other our ours ourselves out over
    own really same she should some such than that the their theirs them themselves then
    there these they this those through too under until very was we were what when where
    which while who whom why will with would yeah yes you your yours yourself yourselves
    okay gonna know think thing things going get got one two well right let see say said
    """.split()  # noqa: SIM905
)


@attrs.frozen(kw_only=True)
class AnalysisResult:
    """Keywords and topics of the recent transcript, most salient first."""

    keywords: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()


class Analyzer(abc.ABC):
    """Turns recent finals into an :class:`AnalysisResult`. Must be quick and bounded."""

    @abc.abstractmethod
    async def analyze(self, transcript: Sequence[TranscriptEntry]) -> AnalysisResult: ...


class KeywordAnalyzer(Analyzer):
    """Most frequent content words (``top`` of them) and recurring adjacent pairs."""

    def __init__(self, *, top: int = 8, max_chars: int = 20_000) -> None:
        self.top = top
        self.max_chars = max_chars

    def extract(self, transcript: Sequence[TranscriptEntry]) -> AnalysisResult:
        """The synchronous core of :meth:`analyze`."""
        text = " ".join(entry.text for entry in transcript)[-self.max_chars :].lower()
        words = [w.strip("'-") for w in _WORD.findall(text)]
        content = [w for w in words if len(w) > 2 and w not in _STOPWORDS]
        counts = collections.Counter(content)
        keywords = tuple(w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        pairs = collections.Counter(itertools.pairwise(content))
        topics = tuple(
            f"{a} {b}"
            for (a, b), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
            if n > 1 and a != b
        )
        return AnalysisResult(keywords=keywords[: self.top], topics=topics[: max(1, self.top // 2)])

    async def analyze(self, transcript: Sequence[TranscriptEntry]) -> AnalysisResult:
        return self.extract(transcript)
