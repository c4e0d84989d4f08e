"""mrope_position_ids reproduces transformers' Qwen3_5Model.get_rope_index, one document at a time."""

import pytest
import torch

from blocks.position_ids import mrope_position_ids

IMAGE = 248056
VISION_START = 248053
VISION_END = 248054
MERGE = 2


@pytest.fixture(scope="module")
def reference_model():
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5Model

    config = transformers.Qwen3_5Config(
        vision_config={"depth": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64, "out_hidden_size": 64,
                       "spatial_merge_size": MERGE, "patch_size": 16},
        text_config={"hidden_size": 64, "num_hidden_layers": 1, "layer_types": ["full_attention"], "vocab_size": 1000,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 64},
    )
    with torch.device("meta"):
        return Qwen3_5Model(config)


def _document(pieces: list) -> tuple[torch.Tensor, torch.Tensor]:
    """pieces: ints (text token count) or (t, h, w) image grids -> (input_ids [T], grids [I, 3])."""
    ids, grids, next_text = [], [], 100
    for piece in pieces:
        if isinstance(piece, int):
            ids += list(range(next_text, next_text + piece))
            next_text += piece
        else:
            t, h, w = piece
            ids += [VISION_START] + [IMAGE] * (t * h * w // MERGE**2) + [VISION_END]
            grids.append(list(piece))
    return torch.tensor(ids), torch.tensor(grids, dtype=torch.long).view(-1, 3)


def _reference(model, input_ids: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    mm_token_type_ids = (input_ids == IMAGE).int().unsqueeze(0)
    position_ids, _ = model.get_rope_index(
        input_ids.unsqueeze(0), mm_token_type_ids, image_grid_thw=grids if len(grids) else None
    )
    return position_ids[:, 0]


@pytest.mark.parametrize(
    "pieces",
    [
        [7],
        [3, (1, 4, 4), 5],
        [(1, 4, 4), 2],
        [4, (1, 4, 8), 3, (1, 6, 2), 6],  # non-square grids: text resumes after max(h, w) / merge
        [2, (2, 4, 4), 3],  # two frames: temporal positions advance per frame
        [1, (1, 2, 2), (1, 4, 2), 1],  # images back to back (each still framed by start/end tokens)
    ],
)
def test_positions_equal_transformers_get_rope_index(reference_model, pieces):
    input_ids, grids = _document(pieces)
    ours = mrope_position_ids(input_ids, grids, image_token_id=IMAGE, spatial_merge_size=MERGE)
    assert ours.shape == (3, input_ids.numel()) and ours.dtype == torch.long
    assert torch.equal(ours, _reference(reference_model, input_ids, grids))


def test_text_after_an_image_skips_to_max_side():
    input_ids, grids = _document([2, (1, 4, 8), 1])  # merged grid 2 x 4 -> text resumes at 3 + 4
    positions = mrope_position_ids(input_ids, grids, image_token_id=IMAGE, spatial_merge_size=MERGE)
    assert positions[:, -2].tolist() == [7, 7, 7]  # <|vision_end|>
    assert positions[:, 3:11].tolist() == [[3] * 8, [3, 3, 3, 3, 4, 4, 4, 4], [3, 4, 5, 6, 3, 4, 5, 6]]


def test_token_count_mismatch_is_an_error():
    input_ids, _ = _document([2, (1, 4, 4), 1])
    with pytest.raises(ValueError, match="needs"):
        mrope_position_ids(input_ids, torch.tensor([[1, 4, 8]]), image_token_id=IMAGE, spatial_merge_size=MERGE)
    with pytest.raises(ValueError, match="no grid"):
        mrope_position_ids(input_ids, None, image_token_id=IMAGE, spatial_merge_size=MERGE)
