"""The whole vision-language model: vision tower → merger → image and video features spliced into the token
embeddings → hybrid text tower → final norm → (tied) LM head → cross-entropy.

Parameter names equal the HF Qwen3.5 checkpoint's (`model.visual.*`, `model.language_model.*`,
`lm_head.weight`), so loading and saving HF checkpoints is a copy, not a renaming table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blocks.constants import IGNORE_INDEX
from blocks.lm_loss import LanguageModelOutput, lm_output, next_token_targets
from blocks.multi_token_prediction import MultiTokenPrediction, next_next_token_labels, next_token_embeddings
from blocks.ops import OpTable
from blocks.packing import PackingContext
from blocks.position_ids import mrope_position_ids
from blocks.text_tower import TextTower
from blocks.vision_grid import VisionLayout


VisionLanguageModelOutput = LanguageModelOutput  # the name callers and tests know


@dataclass(frozen=True)
class SpecialTokens:
    image: int
    video: int
    vision_start: int
    vision_end: int
    eos: int


class VisionLanguageModel(nn.Module):
    """Qwen3.5-style VLM. `model.visual` may be None for a text-only spec; `mtp` (the checkpoint's
    `mtp.*`, blocks/multi_token_prediction.py) is None unless the spec has `model.mtp`."""

    def __init__(
        self,
        *,
        visual: nn.Module | None,
        language_model: TextTower,
        tokens: SpecialTokens,
        spatial_merge_size: int,
        tie_word_embeddings: bool,
        ops: OpTable,
        mtp: MultiTokenPrediction | None = None,
    ):
        super().__init__()
        self.model = nn.Module()  # a plain container, so names read `model.visual...` as in HF
        self.model.visual = visual
        self.model.language_model = language_model
        vocab_size, hidden_size = language_model.embed_tokens.weight.shape
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)
        self.tie_word_embeddings = tie_word_embeddings
        if tie_word_embeddings:
            self.tie_weights()
        self.tokens = tokens
        self.spatial_merge_size = spatial_merge_size
        self.ops = ops
        self.mtp = mtp  # registered last: a model without it initialises and orders tensors as before

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (transformers' name for it)."""
        return self.model.language_model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        """The LM head (transformers' name for it); the loss op reads its weight directly, never calls it."""
        return self.lm_head

    def tie_weights(self) -> None:
        """Share the embedding with the LM head (call again after `to_empty`, which unties)."""
        self.lm_head.weight = self.model.language_model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        shift_labels: torch.Tensor | None = None,
        packing: PackingContext | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        num_mtp_items_in_batch: int | torch.Tensor | None = None,
        return_logits: bool | None = None,
        idle_vision: bool | int = False,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        image_layout: VisionLayout | None = None,
        video_layout: VisionLayout | None = None,
    ) -> VisionLanguageModelOutput:
        """Forward pass, transformers-compatible for unpacked input.

        input_ids:      [B, T] token ids; `<|image_pad|>` tokens are replaced by image features.
        pixel_values:   [N_patches, C * temporal_patch * patch²], all images of the batch in order.
        image_grid_thw: [I, 3] (t, h, w) patch grid of each image.
        pixel_values_videos: [N_video_patches, C * temporal_patch * patch²], all videos of the batch
                        in order; `<|video_pad|>` tokens are replaced by their features.
        video_grid_thw: [V, 3] (t, h, w) patch grid of each video (t frame groups, each its own run
                        of h·w / merge² `<|video_pad|>` tokens).
        image_layout / video_layout: the grids' VisionLayout, made on the host by the collator so
                        the tower reads no GPU tensor back; None: the tower makes it from the grid.
        labels:         [B, T] as in transformers: shifted here (label t+1 is the target of token t).
        shift_labels:   [B, T] already-aligned next-token targets (what the packing collator
                        makes: the last token of every document is IGNORE_INDEX). Give one of the two.
        packing:        the batch's document layout; None means one document per row, with
                        positions computed here by the reference's rope-index rule.
        num_items_in_batch: divide the summed loss by this instead of taking the mean (global-token
                        normalisation across accumulation steps and ranks).
        num_mtp_items_in_batch: the same for the multi-token-prediction loss (its targets are
                        fewer: `next_next_token_labels`); only read by a model with `mtp`.
        return_logits:  default: only when no labels are given (the loss never needs full logits).
        idle_vision:    run the vision tower this many more times (True: once), on one blank minimal
                        image whose features add exactly zero to the embeddings. Under FSDP every
                        rank must run the same collectives: a rank whose batch has no image (or no
                        video: images and videos are one tower call each) while another's has would
                        skip the vision blocks' all-gathers and reduce-scatters and hang the job.
                        The blank passes give the vision parameters zero gradients; the loss and
                        every other gradient are bitwise those of the call without them.
        """
        if packing is None:
            packing = self.unpacked_context(input_ids, image_grid_thw, video_grid_thw)

        text = self.model.language_model
        inputs_embeds = text.embed_tokens(input_ids)
        if pixel_values is not None or pixel_values_videos is not None:
            inputs_embeds = self._splice_vision_features(
                input_ids, inputs_embeds, (pixel_values, image_grid_thw, image_layout),
                (pixel_values_videos, video_grid_thw, video_layout),
            )
        if idle_vision and self.model.visual is not None:
            for _ in range(int(idle_vision)):
                inputs_embeds = inputs_embeds + self._idle_vision_zero(input_ids.device).to(inputs_embeds.dtype)
        hidden = text(inputs_embeds, packing)

        targets = next_token_targets(labels, shift_labels)
        out = lm_output(hidden, self.lm_head, self.ops, labels=None, shift_labels=targets,
                        num_items_in_batch=num_items_in_batch, return_logits=return_logits)
        if self.mtp is not None:
            self._add_mtp_output(out, hidden, inputs_embeds, packing, targets, num_mtp_items_in_batch, return_logits)
        return out

    def _add_mtp_output(
        self,
        out: LanguageModelOutput,
        hidden: torch.Tensor,
        inputs_embeds: torch.Tensor,
        packing: PackingContext,
        targets: torch.Tensor | None,
        num_items: int | torch.Tensor | None,
        return_logits: bool | None,
    ) -> None:
        """The MTP head's loss over the token after next (and its logits when asked) into `out`.
        hidden [B, T, H]: the tower's final-normed output; inputs_embeds [B, T, H]: what it read."""
        ctx = self.model.language_model.context(inputs_embeds, packing)
        next_embeds = next_token_embeddings(inputs_embeds, packing.seq_idx)
        mtp_hidden = self.mtp(hidden, next_embeds, ctx)
        if targets is not None:
            mtp_targets = next_next_token_labels(targets.to(hidden.device), packing.seq_idx)
            out.mtp_loss = self.ops.cross_entropy(
                mtp_hidden.reshape(-1, mtp_hidden.shape[-1]), self.lm_head.weight, mtp_targets.reshape(-1),
                ignore_index=IGNORE_INDEX, num_items=num_items,
            )
        if return_logits or (return_logits is None and targets is None):
            out.mtp_logits = self.lm_head(mtp_hidden)
        out.mtp_loss_weight = self.mtp.loss_weight

    def _splice_vision_features(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        images: tuple[torch.Tensor | None, torch.Tensor | None, VisionLayout | None],
        videos: tuple[torch.Tensor | None, torch.Tensor | None, VisionLayout | None],
    ) -> torch.Tensor:
        """The image features, then the video features (one vision-tower call each, as the reference
        makes them), scattered into the `<|image_pad|>` and then the `<|video_pad|>` positions.
        `images`, `videos`: (pixel values, grid_thw, layout or None)."""
        if self.model.visual is None:
            raise ValueError("this model has no vision tower, but pixel_values were given")
        visual = self.model.visual
        dtype = visual.patch_embed.proj.weight.dtype
        splices = []
        for name, (pixels, grid_thw, layout), token in (("image", images, self.tokens.image), ("video", videos, self.tokens.video)):
            if pixels is None:
                continue
            if grid_thw is None:
                raise ValueError(f"{name} pixel values need {name}_grid_thw")
            splices.append((name, visual(pixels.type(dtype), grid_thw, layout), grid_thw, input_ids == token))
        for name, features, grid_thw, mask in splices:
            n_tokens = int(mask.sum())
            if n_tokens != features.shape[0]:
                raise ValueError(
                    f"{n_tokens} <|{name}_pad|> tokens in input_ids but {features.shape[0]} {name} features "
                    f"from {name}_grid_thw {grid_thw.tolist()} (each needs t·h·w / {self.spatial_merge_size}² tokens)"
                )
            features = features.to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(mask.unsqueeze(-1).to(inputs_embeds.device), features)
        return inputs_embeds

    def _idle_vision_zero(self, device: torch.device) -> torch.Tensor:
        """A [] zero that depends on every vision parameter: the tower run on one blank image of
        merge × merge patches (one merged token), summed and multiplied by 0."""
        visual = self.model.visual
        weight = visual.patch_embed.proj.weight  # [hidden, C, tp, p, p]
        merge = self.spatial_merge_size
        grid_thw = torch.tensor([[1, merge, merge]], dtype=torch.long)  # a host tensor, as the tower reads it
        pixel_values = torch.zeros(merge * merge, weight.shape[1:].numel(), dtype=weight.dtype, device=device)
        return visual(pixel_values, grid_thw).sum() * 0

    def unpacked_context(
        self, input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None, video_grid_thw: torch.Tensor | None = None
    ) -> PackingContext:
        """One document per row of `input_ids` [B, T]; mRoPE positions by the reference's rule."""
        batch, length = input_ids.shape
        rows = []
        grids = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
        videos = iter(video_grid_thw.tolist() if video_grid_thw is not None else [])
        for row in input_ids:
            row_grids = [next(grids) for _ in range(self._count_runs(row, self.tokens.image))]
            row_videos, frame_groups = [], self._count_runs(row, self.tokens.video)
            while frame_groups > 0:  # a video of t frame groups holds t runs of <|video_pad|>
                row_videos.append(next(videos))
                frame_groups -= row_videos[-1][0]
            rows.append(
                mrope_position_ids(
                    row.cpu(),
                    torch.tensor(row_grids, dtype=torch.long).view(-1, 3),
                    image_token_id=self.tokens.image,
                    spatial_merge_size=self.spatial_merge_size,
                    video_grid_thw=torch.tensor(row_videos, dtype=torch.long).view(-1, 3),
                    video_token_id=self.tokens.video,
                )
            )
        position_ids = torch.stack(rows, dim=1).to(input_ids.device)  # [3, B, T]
        ctx = PackingContext.from_document_lengths([[length]] * batch, position_ids=position_ids)
        return ctx.to(input_ids.device)

    @staticmethod
    def _count_runs(row: torch.Tensor, token: int) -> int:
        # Each consecutive run of pad tokens is one image (one frame group of a video), as the reference groups them.
        is_pad = row == token
        starts = is_pad.clone()
        starts[1:] &= ~is_pad[:-1]
        return int(starts.sum())
