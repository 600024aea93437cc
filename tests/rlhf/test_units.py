"""Unit tests of the RLHF front end: reward assembly, log-probs, padding, losses, data parsing."""

import math

import numpy as np
import pytest
import torch

from ppokit.core.advantages import masked_whiten
from ppokit.core.kl import ProportionalKLController
from ppokit.core.losses import bradley_terry_loss
from ppokit.errors import ConfigError, TrainingError
from ppokit.rlhf import data as rdata
from ppokit.rlhf.config import RewardConfig, RLHFConfig, SFTConfig
from ppokit.rlhf.demo import WORDS
from ppokit.rlhf.models.generation import completion_logits, completion_mask, encode_prompts, sample
from ppokit.rlhf.models.loading import load_causal_lm, load_tokenizer, position_ids_from_mask
from ppokit.rlhf.models.logprobs import token_logprobs
from ppokit.rlhf.ppo.advantages import per_token_rewards
from ppokit.rlhf.rewards.sources import CallableReward, CombinedReward, import_callable
from ppokit.rlhf.tiny import build_tiny_gpt2

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_gpt2(tmp_path_factory.mktemp("tiny"), WORDS, n_layer=2, n_embd=32, n_head=2, seed=3)
    return load_tokenizer(str(path)), load_causal_lm(str(path), torch.float32, torch.device("cpu")).eval()


# ---- per-token reward assembly --------------------------------------------------------------

def test_per_token_rewards_kl_everywhere_score_on_last_valid_token_nothing_on_padding():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logp = torch.tensor([[-1.5, -1.0, -0.5, -9.0], [-2.0, -2.0, -2.0, -2.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    scores = torch.tensor([10.0, -4.0])
    beta = 0.1
    rewards, kl = per_token_rewards(scores, logp, ref_logp, mask, beta, "k1")
    expected_kl = (logp - ref_logp) * mask  # k1 = log π − log π_ref
    assert torch.allclose(kl, expected_kl)
    expected = -beta * expected_kl
    expected[0, 2] += 10.0   # last valid token of row 0 is index 2, not the padded index 3
    expected[1, 3] += -4.0
    assert torch.allclose(rewards, expected)
    assert rewards[0, 3] == 0.0 and kl[0, 3] == 0.0


def test_per_token_rewards_k3_is_non_negative_and_matches_formula():
    torch.manual_seed(0)
    logp = torch.randn(3, 5)
    ref_logp = torch.randn(3, 5)
    mask = torch.ones(3, 5, dtype=torch.bool)
    _, kl = per_token_rewards(torch.zeros(3), logp, ref_logp, mask, 1.0, "k3")
    log_ratio = ref_logp - logp
    assert torch.allclose(kl, log_ratio.exp() - 1 - log_ratio, atol=1e-5)
    assert (kl >= 0).all()


def test_per_token_rewards_empty_completion_gets_no_score():
    mask = torch.tensor([[False, False]])
    rewards, _ = per_token_rewards(torch.tensor([5.0]), torch.zeros(1, 2), torch.zeros(1, 2), mask, 0.1)
    assert rewards.abs().sum() == 0


def test_per_token_rewards_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="per_token_rewards"):
        per_token_rewards(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool), 0.1)


def test_masked_whitening_ignores_padding_values():
    x = torch.tensor([[1.0, 2.0, 3.0, 1e6], [4.0, 5.0, -1e6, 7e5]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    out = masked_whiten(x, mask)
    valid = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = (valid - valid.mean()) / valid.std()
    assert torch.allclose(out[mask], expected, atol=1e-5)
    assert (out[~mask] == 0).all()


# ---- log-probs, temperature, padding ----------------------------------------------------------

def test_token_logprobs_at_temperature_match_a_categorical():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11)
    tokens = torch.randint(0, 11, (2, 3))
    for t in (0.5, 1.0, 1.7):
        expected = torch.distributions.Categorical(logits=logits / t).log_prob(tokens)
        assert torch.allclose(token_logprobs(logits, tokens, t), expected, atol=1e-5)


def test_sampled_frequencies_match_logprobs_at_the_sampling_temperature(tiny):
    import copy

    tokenizer, model = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():  # a fresh model is near-uniform; sharpen it so temperature matters
        model.lm_head.weight.mul_(8.0)
    temperature = 0.6
    ids, mask = encode_prompts(tokenizer, ["describe the cat :"] * 4000, torch.device("cpu"))
    torch.manual_seed(0)
    batch, _ = sample(model, tokenizer, ids, mask, max_new_tokens=1, temperature=temperature)
    with torch.no_grad():
        logits = model(input_ids=ids[:1], attention_mask=mask[:1]).logits[0, -1]
    probs = torch.softmax(logits / temperature, dim=-1)
    counts = torch.bincount(batch.completion_ids[:, 0], minlength=probs.numel()).float() / 4000
    # The distribution at T=1 is measurably different, so this would catch a temperature mismatch.
    assert (counts - probs).abs().max() < 0.03
    assert (torch.softmax(logits, -1) - probs).abs().max() > 0.05


def test_left_padding_with_position_ids_gives_the_unpadded_logprobs(tiny):
    tokenizer, model = tiny
    prompts = ["describe the cat :", "describe the very big old green horse :"]
    ids, mask = encode_prompts(tokenizer, prompts, torch.device("cpu"))
    assert mask[0, 0] == 0 and mask[1, 0] == 1  # the short prompt is padded on the left
    completion = torch.tensor([[tokenizer.convert_tokens_to_ids(w) for w in "the cat is happy".split()]] * 2)
    full_ids = torch.cat([ids, completion], 1)
    full_mask = torch.cat([mask, torch.ones_like(completion)], 1)
    with torch.no_grad():
        logits = model(input_ids=full_ids, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask)).logits
        padded = token_logprobs(completion_logits(logits, ids.shape[1]), completion)
        no_pos = model(input_ids=full_ids, attention_mask=full_mask).logits
        padded_no_pos = token_logprobs(completion_logits(no_pos, ids.shape[1]), completion)
        alone_ids = tokenizer([prompts[0]], return_tensors="pt")["input_ids"]
        alone = model(input_ids=torch.cat([alone_ids, completion[:1]], 1)).logits
        alone_lp = token_logprobs(completion_logits(alone, alone_ids.shape[1]), completion[:1])
    assert torch.allclose(padded[0], alone_lp[0], atol=1e-5)
    assert not torch.allclose(padded_no_pos[0], alone_lp[0], atol=1e-3)  # why position ids matter


def test_completion_mask_keeps_tokens_up_to_and_including_the_first_eos():
    ids = torch.tensor([[5, 6, 3, 7, 3], [5, 6, 7, 8, 9], [3, 0, 0, 0, 0]])
    mask, has_eos = completion_mask(ids, 3)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


def test_sample_stops_rows_at_eos_and_pads_after(tiny):
    tokenizer, model = tiny
    ids, mask = encode_prompts(tokenizer, ["describe the cat :"] * 64, torch.device("cpu"))
    torch.manual_seed(1)
    batch, _ = sample(model, tokenizer, ids, mask, max_new_tokens=12, temperature=1.0)
    for row, m, eos in zip(batch.completion_ids, batch.completion_mask, batch.has_eos):
        if eos:
            n = int(m.sum())
            assert row[n - 1] == tokenizer.eos_token_id
            assert (row[n:] == tokenizer.pad_token_id).all()
    assert batch.input_ids.shape[1] == ids.shape[1] + batch.completion_ids.shape[1]


# ---- Bradley-Terry and rankings ----------------------------------------------------------------

def test_bradley_terry_loss_is_negative_log_sigmoid_of_the_gap():
    chosen = torch.tensor([2.0, 0.0, -1.0], requires_grad=True)
    rejected = torch.tensor([1.0, 0.5, -3.0])
    loss, accuracy = bradley_terry_loss(chosen, rejected)
    expected = -torch.log(torch.sigmoid(chosen - rejected)).mean()
    assert torch.allclose(loss, expected)
    assert float(accuracy) == pytest.approx(2 / 3)
    loss.backward()
    assert (chosen.grad < 0).all()  # minimising raises the chosen reward
    big, _ = bradley_terry_loss(torch.tensor([-500.0]), torch.tensor([500.0]))
    assert torch.isfinite(big) and math.isclose(float(big), 1000.0, rel_tol=1e-6)


def test_ranking_to_pairs_expands_all_pairs_best_first():
    pairs = rdata.ranking_to_pairs(["a", "b", "c", "d"], [2, 1, 4, 3])
    assert len(pairs) == 6
    assert set(pairs) == {("b", "a"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("d", "c")}


def test_ranking_ties_give_no_pair():
    assert rdata.ranking_to_pairs(["a", "b", "c"], [1, 1, 2]) == [("a", "c"), ("b", "c")]


def test_ratings_become_pairs_within_a_prompt_only():
    rows = [{"prompt": "p", "response": "x", "rating": 3}, {"prompt": "p", "response": "y", "rating": 7},
            {"prompt": "p", "response": "z", "rating": 7}, {"prompt": "q", "response": "w", "rating": 1}]
    pairs = rdata.ratings_to_pairs(rows)
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == [("y", "x"), ("z", "x")]
    assert all(p["prompt"] == "p" for p in pairs)


def test_proportional_kl_controller_moves_beta_towards_the_target():
    ctl = ProportionalKLController(0.1, target=6.0, horizon=10_000)
    assert ctl.update(12.0, 1000) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    ctl = ProportionalKLController(0.1, target=6.0, horizon=10_000)
    assert ctl.update(3.0, 1000) == pytest.approx(0.1 * (1 - 0.2 * 0.1))
    assert ctl.update(float("nan"), 1000) == ctl.beta


# ---- data parsing --------------------------------------------------------------------------------

def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_broken_line_is_named(tmp_path):
    f = _write(tmp_path / "p.jsonl", '{"prompt": "a"}\n\n{"prompt": "b"\n')
    with pytest.raises(rdata.DataError, match=r"p\.jsonl, line 3: broken JSON"):
        rdata.load(f, {"prompt": ("prompt", "text")})


def test_missing_column_wrong_type_and_empty_prompt_are_named(tmp_path):
    spec = {"prompt": ("question", "text")}
    f = _write(tmp_path / "p.jsonl", '{"question": "a"}\n{"q": "b"}\n')
    with pytest.raises(rdata.DataError, match=r"line 2: field 'prompt' \(column 'question'\) is missing"):
        rdata.load(f, spec)
    f = _write(tmp_path / "p.jsonl", '{"question": 5}\n')
    with pytest.raises(rdata.DataError, match="line 1: prompt .* must be text, got int"):
        rdata.load(f, spec)
    f = _write(tmp_path / "p.jsonl", '{"question": "  "}\n')
    with pytest.raises(rdata.DataError, match="line 1: prompt .* is empty"):
        rdata.load(f, spec)


def test_bad_rows_can_be_skipped_and_counted(tmp_path):
    f = _write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": ""}\n{"x": 1}\n{"prompt": "d"}\n')
    loaded = rdata.load(f, {"prompt": ("prompt", "text")}, skip_bad_rows=True)
    assert [r["prompt"] for r in loaded.rows] == ["a", "d"]
    assert loaded.skipped == 2


def test_over_long_rows_are_named_or_skipped(tmp_path):
    f = _write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": "b b b"}\n')
    loaded = rdata.load(f, {"prompt": ("prompt", "text")})
    words = lambda rows: [len(r["prompt"].split()) for r in rows]  # noqa: E731  a whitespace "tokenizer"
    with pytest.raises(rdata.DataError, match="line 2: prompt is 3 tokens, over the limit of 2"):
        rdata.drop_long(loaded, words, 2, "prompt", "max_prompt_length", False)
    loaded = rdata.drop_long(rdata.load(f, {"prompt": ("prompt", "text")}), words, 2, "prompt", "max_prompt_length", True)
    assert len(loaded.rows) == 1 and loaded.skipped == 1


def test_a_bad_row_early_in_a_large_file_is_reported_before_the_rest_is_tokenized(tmp_path):
    f = _write(tmp_path / "p.jsonl", '{"prompt": "too long here"}\n' + '{"prompt": "ok"}\n' * 10_000)
    seen = []

    def lengths_of(rows):
        seen.extend(rows)
        return [len(r["prompt"].split()) for r in rows]

    with pytest.raises(rdata.DataError, match="line 1: prompt is 3 tokens"):
        rdata.drop_long(rdata.load(f, {"prompt": ("prompt", "text")}), lengths_of, 2, "prompt", "max_prompt_length", False)
    assert len(seen) <= 256  # one chunk, not 10,001 rows


def test_csv_and_parquet_rows_are_read_and_located(tmp_path):
    f = _write(tmp_path / "p.csv", "prompt,response\nhello,world\n,empty\n")
    with pytest.raises(rdata.DataError, match=r"p\.csv, row 1 \(line 3\)"):
        rdata.load(f, {"prompt": ("prompt", "text"), "response": ("response", "text")})
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a", "b"]}), tmp_path / "p.parquet")
    loaded = rdata.load(tmp_path / "p.parquet", {"prompt": ("prompt", "text")})
    assert [r["prompt"] for r in loaded.rows] == ["a", "b"]


def test_datasets_object_and_list_of_dicts_are_accepted():
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["x", "y"]})
    assert len(rdata.load(ds, {"prompt": ("text", "text")}).rows) == 2
    with pytest.raises(rdata.DataError, match="dataset row 1"):
        rdata.load([{"text": "x"}, {"text": 1}], {"prompt": ("text", "text")})


def test_preference_formats_are_detected_and_rankings_expanded(tmp_path):
    config = RewardConfig(model="m")
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [3, 1, 2]}]
    fmt, loaded = rdata.load_preferences(rows, config)
    assert fmt == "pairs" and len(loaded.rows) == 3
    assert {(r["chosen"], r["rejected"]) for r in loaded.rows} == {("b", "a"), ("c", "a"), ("b", "c")}
    with pytest.raises(rdata.DataError, match="ranking has 2 entries but responses has 3"):
        rdata.load_preferences([{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [1, 2]}], config)
    with pytest.raises(rdata.DataError, match="cannot tell the preference format"):
        rdata.load_preferences([{"prompt": "p", "answer": "a"}], config)
    fmt, loaded = rdata.load_preferences([{"prompt": "p", "response": "a", "rating": 1},
                                          {"prompt": "p", "response": "b", "rating": 2}], config)
    assert fmt == "pairs" and loaded.rows[0]["chosen"] == "b"


# ---- configs and reward sources -------------------------------------------------------------------

def test_configs_reject_bad_values_by_field():
    with pytest.raises(ConfigError, match="'policy' is required"):
        RLHFConfig()
    with pytest.raises(ConfigError, match="num_minibatches"):
        RLHFConfig(policy="p", batch_size=6, num_minibatches=4)
    with pytest.raises(ConfigError, match="'kl_estimator'"):
        RLHFConfig(policy="p", kl_estimator="k7")
    with pytest.raises(ConfigError, match="reward_weights has 1 entries but rewards has 2"):
        RLHFConfig(policy="p", rewards=["a", "b"], reward_weights=[1.0])
    with pytest.raises(ConfigError, match="'model' is required"):
        SFTConfig()
    with pytest.raises(ConfigError, match="'head'"):
        RewardConfig(model="m", head="mlp")


def test_callable_reward_errors_name_the_function():
    with pytest.raises(ConfigError, match="expected 'module:function'"):
        import_callable("nocolon")
    with pytest.raises(ConfigError, match="cannot import module"):
        import_callable("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        import_callable("tests.rlhf.helpers:nope")
    with pytest.raises(ConfigError, match="is not callable"):
        import_callable("tests.rlhf.helpers:not_callable")
    with pytest.raises(TrainingError, match="returned 1 scores for 2 completions"):
        CallableReward("tests.rlhf.helpers:wrong_length")(["p", "p"], ["a", "b"])
    with pytest.raises(TrainingError, match="non-finite score"):
        CallableReward("tests.rlhf.helpers:not_finite")(["p"], ["a"])
    with pytest.raises(TrainingError, match="raised RuntimeError: boom"):
        CallableReward("tests.rlhf.helpers:raises")(["p"], ["a"])


@pytest.mark.parametrize("returned,message", [
    ({"a": 1.0, "b": 2.0}, "must return a list of numbers, got dict"),   # would be scored by its keys
    ("11", "must return a list of numbers, got str"),                      # would be two scores of 1
    ([1.0, "2"], "returned a str .* at position 1"),
    ([True, False], "returned a bool"),
    ([None, 1.0], "returned a NoneType"),
    (np.ones((2, 1)), "1-D sequence of real numbers, got a 2-D ndarray"),
    (torch.tensor([True, False]), "1-D sequence of real numbers"),
])
def test_a_reward_function_must_return_real_numbers(returned, message):
    with pytest.raises(TrainingError, match=message):
        CallableReward(lambda prompts, completions: returned)(["p", "q"], ["a", "b"])


def test_reward_functions_may_return_numpy_and_torch_numbers():
    for returned in ([1, np.float32(2.5)], np.array([1.0, 2.5]), torch.tensor([1.0, 2.5]), (torch.tensor(1.0), 2.5)):
        scores = CallableReward(lambda prompts, completions, r=returned: r)(["p", "q"], ["a", "b"])
        assert scores.tolist() == [1.0, 2.5]


def test_combined_reward_is_the_weighted_sum():
    total, parts = CombinedReward([lambda p, c: [1.0, 2.0], lambda p, c: [10.0, 0.0]], [0.5, 2.0])(["p", "q"], ["a", "b"])
    assert total.tolist() == [20.5, 1.0]
    assert parts == {"score_0": 1.5, "score_1": 5.0}


def test_fused_activation_gives_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM
    from transformers.activations import NewGELUActivation

    path = build_tiny_gpt2(tmp_path / "m", WORDS, n_layer=2, n_embd=32, n_head=2, seed=5)
    plain = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    fused = load_causal_lm(str(path), torch.float32, torch.device("cpu")).eval()
    assert any(isinstance(m, NewGELUActivation) for m in plain.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    ids = torch.randint(4, len(WORDS), (3, 9))
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, fused(input_ids=ids).logits, atol=1e-5)


def test_data_in_words_the_tokenizer_does_not_know_is_refused(tmp_path):
    from ppokit.errors import CheckpointError
    from ppokit.rlhf.demo import WORDS
    from ppokit.rlhf.models.loading import check_tokenizes
    from ppokit.rlhf.tiny import build_tiny_gpt2

    path = build_tiny_gpt2(tmp_path / "m", WORDS, n_layer=1, n_embd=16, n_head=2, seed=0)
    tokenizer = load_tokenizer(str(path))
    check_tokenizes(tokenizer, ["describe the cat :"], str(path), "prompts")
    with pytest.raises(CheckpointError, match="nothing but unknown tokens"):
        check_tokenizes(tokenizer, ["xyzzy plugh", "frobnicate"], str(path), "prompts")


def test_an_interrupted_final_save_leaves_no_half_model(tmp_path, monkeypatch):
    """The SFT model is complete or absent: weights without a tokenizer would 'train' on nothing."""
    from transformers import PreTrainedTokenizerBase

    from ppokit.rlhf.config import SFTConfig
    from ppokit.rlhf.demo import WORDS
    from ppokit.rlhf.supervised.sft import train_sft
    from ppokit.rlhf.tiny import build_tiny_gpt2

    base = build_tiny_gpt2(tmp_path / "base", WORDS, n_layer=1, n_embd=16, n_head=2, seed=0)

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", killed)
    rows = [{"prompt": "describe the cat :", "response": " the cat is happy ."}] * 4
    with pytest.raises(KeyboardInterrupt):
        train_sft(SFTConfig(model=str(base), progress=False, tensorboard=False, device="cpu"), data=rows,
                  run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()
    assert not list((tmp_path / "run").glob(".model.*"))
