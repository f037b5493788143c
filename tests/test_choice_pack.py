"""Tree packing of multiple-choice requests: segments, rows, the shared-prefix mask, and packed scores
that equal one plain forward per option."""

import pytest
import torch

from instructune.evaluate import choice_pack
from instructune.evaluate.choice_pack import build_segments, pack_rows, score_packed, tree_mask

# Items of very different lengths: (context ids per option, continuation ids per option). Item 3's
# options carry different context ids (as a joint tokenization that merges across the boundary
# would give): they must not share one context. Item 4 has a one-token option and an empty one.
ITEMS = [
    ([[5, 6, 7]] * 2, [[8, 9], [10, 11, 12, 13]]),
    ([list(range(20, 80))] * 4, [[3, 4, 5], [6], [7, 8, 9, 10, 11, 12, 13, 14], [15, 16]]),
    ([[40]] * 3, [[41, 42], [43], [44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55]]),
    ([[60, 61, 62], [60, 61, 63], [60, 61, 62]], [[64, 65], [66, 67, 68], [69]]),
    ([[70, 71]] * 2, [[72], []]),
    ([list(range(100, 190))] * 2, [list(range(200, 230)), [231, 232]]),
]


def _naive(model, items):
    """One unpadded, uncached forward per option: the sum of log p(continuation | context)."""
    sums = []
    with torch.no_grad():
        for contexts, options in items:
            for context, option in zip(contexts, options):
                if not option:
                    sums.append(0.0)
                    continue
                logprobs = model(torch.tensor([context + option])).logits[0].log_softmax(-1)
                sums.append(sum(logprobs[len(context) - 1 + j, token].item() for j, token in enumerate(option)))
    return sums


class TestBuildSegments:
    def test_options_with_equal_context_ids_share_one_segment(self):
        segments = build_segments(ITEMS[3:4], 256)
        assert [(s.context, s.requests) for s in segments] == [([60, 61, 62], [0, 2]), ([60, 61, 63], [1])]

    def test_a_segment_past_row_tokens_continues_in_a_copy_of_its_context(self):
        segments = build_segments(ITEMS[1:2], 66)
        assert [s.requests for s in segments] == [[0, 1], [2], [3]]
        assert all(s.context == list(range(20, 80)) for s in segments)
        # 60 context tokens + 2 + 0 fed option tokens; the 8-token option alone is 67, past 66.
        assert [s.length for s in segments] == [62, 67, 61]

    def test_without_sharing_every_option_is_its_own_sequence(self):
        segments = build_segments(ITEMS[:2], 256, share_context=False)
        assert [s.requests for s in segments] == [[0], [1], [2], [3], [4], [5]]
        assert [s.item for s in segments] == [0, 0, 1, 1, 1, 1]


class TestPackRows:
    def test_first_fit_decreasing(self):
        assert pack_rows([5, 3, 2, 4], 8) == [[0, 1], [3, 2]]

    def test_a_segment_longer_than_the_row_gets_a_row_of_its_own(self):
        assert pack_rows([3, 12, 4], 8) == [[1], [2, 0]]


class TestTreeMask:
    def test_options_see_their_context_and_themselves_never_each_other(self):
        # One row: context (2 tokens), option 1 (2 fed tokens), option 2 (1), then a second segment, padding.
        seg = torch.tensor([[0, 0, 0, 0, 0, 1, 1, -1]])
        branch = torch.tensor([[0, 0, 1, 1, 2, 0, 1, 0]])
        seen = tree_mask(seg, branch, torch.float32)[0, 0] == 0
        assert seen.int().tolist() == [
            [1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 1, 0, 0],
            [0, 0, 0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0, 1],
        ]


class TestScorePacked:
    @pytest.mark.parametrize("row_tokens, batch_tokens", [(256, 2048), (64, 128), (0, 1), (1000, 100000)])
    def test_packed_scores_equal_one_forward_per_option(self, llama, row_tokens, batch_tokens):
        llama.eval()
        with torch.no_grad():
            packed = score_packed(llama, ITEMS, row_tokens=row_tokens, batch_tokens=batch_tokens)
        assert packed == pytest.approx(_naive(llama, ITEMS), abs=1e-4)

    def test_several_segments_share_a_row_at_the_default_size(self):
        segments = build_segments(ITEMS, 256)
        rows = pack_rows([s.length for s in segments], 256)
        assert len(rows) < len(segments)

    def test_eager_attention_takes_the_same_mask(self, llama):
        llama.eval()
        llama.set_attn_implementation("eager")
        with torch.no_grad():
            packed = score_packed(llama, ITEMS, row_tokens=64, batch_tokens=256)
        assert packed == pytest.approx(_naive(llama, ITEMS), abs=1e-4)

    def test_attention_without_4d_masks_runs_each_option_alone(self, llama, monkeypatch):
        # flash-attention takes no 4D mask: every option then runs after its own context copy, padded.
        llama.eval()
        monkeypatch.setattr(choice_pack, "_accepts_4d_mask", lambda model: False)
        with torch.no_grad():
            packed = score_packed(llama, ITEMS, batch_tokens=256)
        assert packed == pytest.approx(_naive(llama, ITEMS), abs=1e-4)

    def test_sliding_window_shorter_than_an_item_runs_each_option_alone(self, tokenizer):
        from transformers import MistralConfig, MistralForCausalLM

        torch.manual_seed(0)
        model = MistralForCausalLM(MistralConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
        )).eval()
        # Items 1 and 5 are longer than the window: a shared-prefix mask would let options see past it.
        with torch.no_grad():
            packed = score_packed(model, ITEMS)
        assert packed == pytest.approx(_naive(model, ITEMS), abs=1e-4)

    def test_progress_counts_every_item_once(self, llama):
        done = []
        with torch.no_grad():
            score_packed(llama.eval(), ITEMS, row_tokens=64, batch_tokens=128, on_items_done=done.append)
        assert sum(done) == len(ITEMS) and len(done) > 1
