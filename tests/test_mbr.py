"""MBR decoding: the utility equals rouge-score's, the choice is the consensus, and the candidates are the samples
Hugging Face `generate` draws with the same seed."""

import json
import random

import pytest
import torch

from instructune.errors import InstructuneError
from instructune.evaluate import run as run_module
from instructune.evaluate.provenance import decoding_settings
from instructune.generation.engines import Decoding
from instructune.generation.generate import GenerateOptions, encode_prompt, generate, stop_token_ids
from instructune.generation.mbr import Mbr, choose, expected_utilities
from test_generate import _chatty

WORDS = ("the customer asks about a refund for the order and the agents explain how returns work while "
         "person1 person2 talked talking talks meeting meetings tomorrow").split()


def _texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14))) for _ in range(count)]


class TestUtility:
    @pytest.mark.parametrize("utility", ["rouge1", "rouge2", "rougeL", "rouge"])
    def test_mean_utility_equals_rouge_score_pair_by_pair(self, utility):
        from rouge_score import rouge_scorer

        types = ["rouge1", "rouge2", "rougeL"] if utility == "rouge" else [utility]
        reference = rouge_scorer.RougeScorer(types, use_stemmer=True)
        for seed in range(5):
            texts = _texts(seed, 7) + ["", "Talked, TALKING: talks!"]
            expected = []
            for i, candidate in enumerate(texts):
                # rouge-score's own call, the candidate as prediction and each other sample as reference
                pairs = [reference.score(other, candidate) for j, other in enumerate(texts) if j != i]
                expected.append(sum(sum(p[t].fmeasure for t in types) / len(types) for p in pairs) / len(pairs))
            assert expected_utilities(texts, utility) == pytest.approx(expected, abs=1e-12)

    def test_the_consensus_wins_and_a_tie_goes_to_the_first_drawn(self):
        samples = ["Tom asks Mary to the party.", "Mary invites Tom to a party.", "Tom asks Mary to a party.",
                   "It rains."]
        assert choose(samples) == 2  # shares the most words with the others
        assert choose(["a b", "c d", "a b", "c d"]) == 0
        assert choose(["only one"]) == 0
        assert expected_utilities(["same", "same", "same"]) == [1.0, 1.0, 1.0]

    def test_bad_settings_are_one_clear_error(self):
        with pytest.raises(InstructuneError, match="samples 1; expected >= 2"):
            Mbr(samples=1)
        with pytest.raises(InstructuneError, match="utility 'bleu'; expected one of rouge1, rouge2, rougeL, rouge"):
            Mbr(utility="bleu")
        with pytest.raises(InstructuneError, match="temperature 0"):
            Mbr(temperature=0).sampling()
        with pytest.raises(InstructuneError, match="MBR decoding samples its own candidates; it does not combine with num_beams=2"):
            GenerateOptions(mbr=Mbr(), decoding=Decoding(num_beams=2))
        with pytest.raises(InstructuneError, match="no candidates"):
            choose([])


PROMPTS = ["Hi", "Where is my order? I want a refund", "Summarize: #Person1#: Hello. #Person2#: Hi there."]


def _hf_samples(model, tokenizer, prompt: str, mbr: Mbr, max_new_tokens: int) -> tuple[list[str], list[int]]:
    """The reference candidates: Hugging Face `generate` sampling `mbr.samples` answers for one unpadded prompt
    (their texts, and their lengths in new tokens)."""
    stop_ids = stop_token_ids(model, tokenizer)
    input_ids = torch.tensor([encode_prompt(model, tokenizer, prompt)])
    torch.manual_seed(mbr.seed)
    with torch.inference_mode():
        output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                                temperature=mbr.temperature, top_p=mbr.top_p, top_k=mbr.top_k,
                                num_return_sequences=mbr.samples, max_new_tokens=max_new_tokens,
                                eos_token_id=stop_ids, pad_token_id=stop_ids[0])
    answers, lengths = [], []
    for row in output[:, input_ids.shape[1]:].tolist():
        row = next((row[:i] for i, token in enumerate(row) if token in stop_ids), row)
        answers.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        lengths.append(len(row))
    return answers, lengths


class TestGenerate:
    def test_answer_is_the_consensus_of_hf_generates_own_samples(self, llama, tokenizer):
        model = _chatty(llama)
        mbr = Mbr(samples=6, temperature=1.5, seed=11)
        for prompt in PROMPTS:
            samples, lengths = _hf_samples(model, tokenizer, prompt, mbr, 8)
            assert len(set(samples)) > 2  # varied enough that the choice matters
            counts: list[int] = []
            got = generate(model, tokenizer, [prompt], mbr=mbr, max_new_tokens=8, batch_size=1, engine="hf",
                           progress=False, new_token_counts=counts)
            assert got == [samples[choose(samples)]] and counts == [lengths[choose(samples)]]

    def test_batched_answers_come_back_in_input_order_and_are_seeded(self, llama, tokenizer):
        model = _chatty(llama)
        mbr = Mbr(samples=4, temperature=1.5, seed=3)
        torch.manual_seed(123)
        state = torch.random.get_rng_state()
        first = generate(model, tokenizer, PROMPTS, mbr=mbr, max_new_tokens=6, batch_size=2, engine="hf", progress=False)
        assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator is left as it was
        again = generate(model, tokenizer, PROMPTS, mbr=mbr, max_new_tokens=6, batch_size=2, engine="hf", progress=False)
        assert first == again and len(first) == len(PROMPTS)
        other_seed = generate(model, tokenizer, PROMPTS, mbr=Mbr(samples=4, temperature=1.5, seed=4), max_new_tokens=6,
                              batch_size=2, engine="hf", progress=False)
        assert other_seed != first

    def test_greedy_only_engine_refuses_mbr(self, llama, tokenizer):
        with pytest.raises(InstructuneError, match="engine 'native' cannot run here: it decodes greedily only"):
            generate(llama, tokenizer, ["Hi"], mbr=Mbr(samples=2), engine="native", progress=False)


class TestEvalCommand:
    def test_mbr_flags_are_recorded_and_described(self, tmp_path, tiny_llama_dir):
        dialogs = tmp_path / "dialogsum.jsonl"
        dialogs.write_text("".join(json.dumps({"dialogue": f"#Person1#: Hi {i}. #Person2#: Hello.",
                                               "summary": "They greet."}) + "\n" for i in range(3)))
        out = tmp_path / "mbr.json"
        assert run_module.main(["--model", str(tiny_llama_dir), "--task", "dialogsum", "--data", str(dialogs),
                                "--max-new-tokens", "4", "--mbr", "4", "--mbr-utility", "rougeL",
                                "--mbr-temperature", "0.8", "--mbr-top-p", "0.95", "--seed", "5",
                                "--no-progress", "-o", str(out)]) == 0
        result = json.loads(out.read_text())
        summary = result["tasks"]["dialogsum"]
        assert summary["mbr"] == {"samples": 4, "utility": "rougeL", "temperature": 0.8, "top_p": 0.95, "top_k": 50,
                                  "seed": 5}
        assert summary["n_examples"] == 3 and "rouge1" in summary["metrics"]
        assert decoding_settings([result], ["mbr"]) == {
            "dialogsum": "MBR over 4 samples by rougeL (temperature 0.8, top_p 0.95, top_k 50, seed 5)"}
        again = tmp_path / "again.json"
        run_module.main(["--model", str(tiny_llama_dir), "--task", "dialogsum", "--data", str(dialogs),
                         "--max-new-tokens", "4", "--mbr", "4", "--mbr-utility", "rougeL", "--mbr-temperature", "0.8",
                         "--mbr-top-p", "0.95", "--seed", "5", "--no-progress", "-o", str(again)])
        predictions = [json.loads(line)["prediction"] for line in out.with_suffix(".predictions.jsonl").open()]
        assert predictions == [json.loads(line)["prediction"] for line in again.with_suffix(".predictions.jsonl").open()]

    def test_one_sample_is_refused(self, tmp_path):
        with pytest.raises(InstructuneError, match="samples 1; expected >= 2"):
            run_module.main(["--task", "dialogsum", "--data", str(tmp_path / "d.jsonl"), "--mbr", "1",
                             "-o", str(tmp_path / "o.json")])
