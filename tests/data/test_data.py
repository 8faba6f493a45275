import json

import pytest

from taps.data import sources
from taps.data.benchmarks import BENCHMARKS, load_benchmark
from taps.data.corpora import (
    boxed,
    contamination,
    iter_json_array,
    load_jsonl_corpus,
    load_math_instruct,
    load_sharegpt,
    math_share,
    mix,
    split,
    word_count,
)
from taps.errors import TapsError


def test_benchmark_counts_and_fields(data_dir):
    counts = {"mt_bench": 80, "gsm8k": 1319, "math500": 500, "svamp": 1000}
    for name in BENCHMARKS:
        prompts = load_benchmark(name, data_dir)
        assert len(prompts) == counts[name]
        assert all(p.turns and all(t.strip() for t in p.turns) for p in prompts)
    mt = load_benchmark("mt_bench", data_dir)
    assert all(len(p.turns) == 2 for p in mt)
    assert len({p.category for p in mt}) == 8
    assert load_benchmark("gsm8k", data_dir)[0].reference == "18"


def test_long_prompt_benchmark_puts_worked_train_examples_before_each_test_question(data_dir):
    prompts = load_benchmark("gsm8k_8shot", data_dir)
    plain = load_benchmark("gsm8k", data_dir)
    assert len(prompts) == len(plain) and prompts[0].reference == plain[0].reference == "18"
    text = prompts[0].turns[0]
    assert text.count("Question: ") == 9 and text.count("The answer is ") == 8
    assert text.endswith(f"Question: {plain[0].turns[0]}\nAnswer:")
    assert "<<" not in text  # the calculator annotations of the train solutions are gone
    assert len({p.turns[0].split("\n\nQuestion: ")[1] for p in prompts[:5]}) == 1  # the same shots


def test_sampling_is_deterministic(data_dir):
    a = load_benchmark("svamp", data_dir, limit=5, seed=3)
    assert a == load_benchmark("svamp", data_dir, limit=5, seed=3)
    assert a != load_benchmark("svamp", data_dir, limit=5, seed=4)
    assert load_benchmark("svamp", data_dir, limit=2) == load_benchmark("svamp", data_dir)[:2]


def test_bad_benchmark_inputs(tmp_path, data_dir):
    with pytest.raises(TapsError, match="unknown benchmark"):
        load_benchmark("hellaswag", data_dir)
    with pytest.raises(TapsError, match="limit"):
        load_benchmark("gsm8k", data_dir, limit=0)
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi"}\n{"turns": ["a", "b"], "id": "x"}\n')
    prompts = load_benchmark(f"jsonl:{f}")
    assert [p.turns for p in prompts] == [("hi",), ("a", "b")] and prompts[1].id == "x"
    f.write_text('{"prompt": "hi"}\n{oops\n')
    with pytest.raises(TapsError, match="line 2"):
        load_benchmark(f"jsonl:{f}")
    f.write_text('{"prompt": ""}\n')
    with pytest.raises(TapsError, match="non-empty"):
        load_benchmark(f"jsonl:{f}")
    for text, message in [
        ('{"prompt": "hi"}\n["a"]\n', "line 2 is not a JSON object"),
        ('{"prompt": "a", "turns": ["b"]}\n', 'exactly one of "prompt" or "turns"'),
        ("\n\n", "holds no prompts"),
    ]:
        f.write_text(text)
        with pytest.raises(TapsError, match=message):
            load_benchmark(f"jsonl:{f}")


def test_truncated_or_missing_file_is_caught(tmp_path, data_dir, monkeypatch):
    copy = tmp_path / "mirror"
    (copy / "gsm8k").mkdir(parents=True)
    src = data_dir / "gsm8k" / "test.jsonl"
    (copy / "gsm8k" / "test.jsonl").write_bytes(src.read_bytes()[:-100])
    with pytest.raises(TapsError, match="sha256"):
        load_benchmark("gsm8k", copy)
    monkeypatch.setenv("TAPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TAPS_DATA_DIR", raising=False)
    monkeypatch.setattr(sources, "_download", lambda url, dest: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(TapsError, match="TAPS_DATA_DIR"):
        load_benchmark("math500", tmp_path / "empty")


def test_mirror_from_environment(monkeypatch, data_dir):
    monkeypatch.setenv("TAPS_DATA_DIR", str(data_dir))
    assert len(load_benchmark("math500")) == 500


def test_math_instruct(data_dir):
    convs = load_math_instruct(data_dir)
    # 7473 GSM8K + 7500 MATH (2 without a \boxed answer are dropped) + 254 + 254 AQuA-RAT
    assert len(convs) == 7473 + 7498 + 508
    assert all(c[1]["content"].rstrip().startswith("") and "The answer is" in c[1]["content"] for c in convs)
    assert "<<" not in convs[0][1]["content"] and convs[0][1]["content"].endswith("The answer is 72.")
    assert boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"


def test_no_benchmark_item_in_the_math_corpus(data_dir):
    prompts = [p for b in BENCHMARKS for p in load_benchmark(b, data_dir)]
    convs = load_math_instruct(data_dir)
    assert contamination(convs, prompts) == []
    planted = convs + [
        [
            {"role": "user", "content": "  " + prompts[5].turns[0].upper()},
            {"role": "assistant", "content": "x"},
        ]
    ]
    assert contamination(planted, prompts) == [prompts[5].id]


def test_sharegpt_recovery_from_a_truncated_file(tmp_path):
    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "empty", "conversations": []},
        {
            "id": "lead",
            "conversations": [
                {"from": "gpt", "value": "ignored"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "r"},
            ],
        },
        {"id": "noreply", "conversations": [{"from": "human", "value": "only a question"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]},
    ]
    text = json.dumps(records, indent=1)
    cut = text[: text.rfind('"y"')]  # the last conversation is cut off mid-way
    f = tmp_path / "sg.json"
    f.write_text(cut)
    convs = load_sharegpt(f)
    assert convs == [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}],
    ]
    assert len(list(iter_json_array(text))) == 5


@pytest.mark.parametrize("name, share", [("mixed", 0.5), ("mixed:0.75", 0.75), ("mixed:.2", 0.2)])
def test_a_mixed_corpus_name_gives_its_math_share(name, share):
    assert math_share(name) == share


@pytest.mark.parametrize("name", ["mixed:", "mixed:1", "mixed:0", "mixed:abc", "mixed:-0.5"])
def test_a_bad_math_share_names_the_fix(name):
    with pytest.raises(TapsError, match="math share after 'mixed:' must be a number in"):
        math_share(name)


def test_mixture_ratio_split_and_user_corpus(tmp_path):
    a = [
        [{"role": "user", "content": "a " * 10}, {"role": "assistant", "content": "b " * 10}]
        for _ in range(200)
    ]
    b = [
        [{"role": "user", "content": "c " * 5}, {"role": "assistant", "content": "d " * 25}]
        for _ in range(200)
    ]
    mixed = mix({"a": a, "b": b}, {"a": 0.25, "b": 0.75}, total=2000)
    words_a = sum(word_count(c) for c in mixed if c[0]["content"].startswith("a"))
    assert abs(words_a / sum(word_count(c) for c in mixed) - 0.25) < 0.03
    assert mixed == mix({"a": a, "b": b}, {"a": 0.25, "b": 0.75}, total=2000)
    with pytest.raises(TapsError):
        mix({"a": a}, {"b": 1.0}, total=10)
    train, held = split(a + b, 10, seed=1)
    assert len(held) == 10 and len(train) == 390 and split(a + b, 10, seed=1) == (train, held)
    f = tmp_path / "c.jsonl"
    f.write_text('{"prompt": "p", "response": "r"}\n{"messages": [{"role": "user", "content": "u"}]}\n')
    assert len(load_jsonl_corpus(f)) == 2
    f.write_text('{"text": "no"}\n')
    with pytest.raises(TapsError, match="record 1"):
        load_jsonl_corpus(f)
