"""A packed row's MTP head predicts nothing across documents: each document's MTP logits are those of
the document run alone (to float rounding: the row's matmuls are longer), changing one document
changes no other document's MTP logits (bitwise),
and the MTP targets stop two tokens before every document's end. Leaky variants (one document
over the whole row; the next token's embedding not cut at document ends) fail the same checks, so
the checks can fail."""

import pytest
import torch

from assembler import build_model, spec_from_hf_config
from assembler.spec.loading import load_spec_from_dict
from blocks import vision_language_model
from blocks.constants import IGNORE_INDEX
from blocks.packing import PackingContext
from tests.oracle import tiny_config

LENGTHS = [5, 7, 4]  # one row of three documents
ROW = sum(LENGTHS)


@pytest.fixture(scope="module")
def model():
    config = tiny_config(text={"eos_token_id": 254}, image_token_id=250, video_token_id=251,
                         vision_start_token_id=252, vision_end_token_id=253)
    base = spec_from_hf_config(config.to_dict())
    spec = load_spec_from_dict({"name": "mtp", "model": {**base.model, "mtp": {"loss_weight": 1.0}}, "ops": {"backend": "hf"}})
    model = build_model(spec, seed=0)
    with torch.no_grad():  # zero-initialised norms would hide a wrong norm; give every weight some noise
        generator = torch.Generator().manual_seed(1)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def _documents(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 240, (n,), generator=generator) for n in LENGTHS]


def _shift_labels(document: torch.Tensor) -> torch.Tensor:
    """The collator's next-token targets of one document: token t+1, nothing after its last token."""
    return torch.cat([document[1:], torch.tensor([IGNORE_INDEX])])


def _packed(documents):
    input_ids = torch.cat(documents)[None]
    shift_labels = torch.cat([_shift_labels(d) for d in documents])[None]
    return input_ids, shift_labels


def _mtp_logits(model, input_ids, shift_labels, lengths):
    with torch.no_grad():
        packing = PackingContext.from_document_lengths([lengths])
        return model(input_ids, shift_labels=shift_labels, packing=packing, return_logits=True)


def _spans():
    start = 0
    for n in LENGTHS:
        yield start, start + n
        start += n


AS_ALONE = 1e-4  # the packed row's logits differ from each document's alone by rounding only (~2e-6 seen; a leak: ~1)


def _largest_difference_from_alone(model, lengths_seen_by_model) -> float:
    """max |MTP logits of a document in the packed row - those of the document run alone|, over documents."""
    documents = _documents()
    packed = _mtp_logits(model, *_packed(documents), lengths_seen_by_model).mtp_logits
    largest = 0.0
    for (start, end), document in zip(_spans(), documents):
        alone = _mtp_logits(model, document[None], _shift_labels(document)[None], [len(document)]).mtp_logits
        largest = max(largest, float((packed[:, start:end] - alone).abs().max()))
    return largest


def _others_unchanged_when_one_changes(model, lengths_seen_by_model) -> bool:
    documents = _documents()
    before = _mtp_logits(model, *_packed(documents), lengths_seen_by_model).mtp_logits
    changed = list(documents)
    changed[1] = (documents[1] + 17) % 240  # every token of the middle document
    after = _mtp_logits(model, *_packed(changed), lengths_seen_by_model).mtp_logits
    (a0, a1), _, (c0, c1) = list(_spans())
    return torch.equal(before[:, a0:a1], after[:, a0:a1]) and torch.equal(before[:, c0:c1], after[:, c0:c1])


def test_each_document_gets_the_mtp_logits_it_gets_alone(model):
    assert _largest_difference_from_alone(model, LENGTHS) < AS_ALONE


def test_changing_one_document_changes_no_other_documents_mtp_logits(model):
    assert _others_unchanged_when_one_changes(model, LENGTHS)


def test_mtp_targets_stop_two_tokens_before_each_document_ends(model):
    documents = _documents()
    input_ids, shift_labels = _packed(documents)
    expected = []
    for document in documents:  # position t of a document: its token t+2, none for its last two
        expected += document[2:].tolist() + [IGNORE_INDEX, IGNORE_INDEX]
    got = vision_language_model.next_next_token_labels(shift_labels, PackingContext.from_document_lengths([LENGTHS]).seq_idx)
    assert got[0].tolist() == expected


def test_packed_mtp_loss_is_the_documents_losses_summed(model):
    documents = _documents()
    input_ids, shift_labels = _packed(documents)
    total = sum(n - 2 for n in LENGTHS)  # targets: every position but each document's last two
    with torch.no_grad():
        packed = model(input_ids, shift_labels=shift_labels, packing=PackingContext.from_document_lengths([LENGTHS]),
                       num_mtp_items_in_batch=total).mtp_loss
        alone = [model(d[None], shift_labels=_shift_labels(d)[None], num_mtp_items_in_batch=total).mtp_loss for d in documents]
    torch.testing.assert_close(packed, sum(alone), rtol=1e-6, atol=0)


def test_control_one_document_over_the_whole_row_leaks(model):
    """The checks above fail for a packing that lets attention (and the next-token input) cross documents."""
    assert _largest_difference_from_alone(model, [ROW]) > 100 * AS_ALONE
    assert not _others_unchanged_when_one_changes(model, [ROW])


def test_control_an_uncut_next_token_embedding_leaks(model, monkeypatch):
    """...and for a head fed the next document's first token at a document's last position: its
    attention is still document-masked, but that position's prediction would see the next document."""
    def uncut(inputs_embeds, seq_idx):
        return torch.nn.functional.pad(inputs_embeds[:, 1:], (0, 0, 0, 1))

    monkeypatch.setattr(vision_language_model, "next_token_embeddings", uncut)
    assert _largest_difference_from_alone(model, LENGTHS) > 100 * AS_ALONE
    assert not _others_unchanged_when_one_changes(model, LENGTHS)
