"""Keeping only good edits (paper section 2, step 7).

Both filters first check the pixels against the editor's `changed` region (H, W): the largest change outside it
must be at most `max_outside_change`, the mean change inside at least `min_inside_change` (0..1 units).

- `EncoderFilter` (no CLIP needed): the frozen vision encoder must see the change where it is. Per grid cell,
  change = 1 - cosine(original token, edited token); each cell is weighted by how much of it the region covers,
  and the mean change inside must be at least `min_encoder_ratio` x the mean change outside. An edit the encoder
  cannot see (or that it sees everywhere) teaches nothing about where to look.
- `ClipFilter` (the paper's): CLIP image-image cosine between original and edited within `clip_min`..`clip_max`
  (changed, but still the same picture), and the edit moving the image towards its text: cos(edited, text) -
  cos(original, text) >= `clip_min_direction`, text = what appears (modify/swap/add) or, reversed, what vanished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from components.synth.attention import VisionSide, to_grid
from components.synth.config import FilterConfig
from components.synth.planner import EditPlan


@dataclass
class Verdict:
    kept: bool
    code: str | None = None  # why not kept
    reason: str | None = None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class Candidate:
    """One edited pair waiting for the filter; `features` (N, Dv) of the original come from the attention step."""

    original: Image.Image
    edited: Image.Image
    changed: np.ndarray  # (H, W) bool
    plan: EditPlan
    features: torch.Tensor


def pixel_check(candidate: Candidate, config: FilterConfig) -> Verdict:
    before = np.asarray(candidate.original, dtype=np.float32) / 255
    after = np.asarray(candidate.edited, dtype=np.float32) / 255
    diff = np.abs(after - before).max(-1)  # (H, W): the largest channel change per pixel
    changed = candidate.changed
    outside = float(diff[~changed].max()) if (~changed).any() else 0.0
    inside = float(diff[changed].mean()) if changed.any() else 0.0
    scores = {"outside_max": round(outside, 6), "inside_mean": round(inside, 6)}
    if outside > config.max_outside_change + 1e-9:
        return Verdict(
            False,
            "changed_outside",
            f"pixels outside the edited region changed by up to {outside:.3f} (allowed {config.max_outside_change})",
            scores,
        )
    if inside < config.min_inside_change:
        return Verdict(
            False,
            "unchanged_inside",
            f"the edited region changed by only {inside:.3f} on average (needs {config.min_inside_change})",
            scores,
        )
    return Verdict(True, scores=scores)


class EncoderFilter:
    def __init__(self, config: FilterConfig, vision: VisionSide) -> None:
        self.config, self.vision = config, vision

    def __call__(self, candidates: list[Candidate]) -> list[Verdict]:
        verdicts = [pixel_check(c, self.config) for c in candidates]
        passed = [i for i, v in enumerate(verdicts) if v.kept]
        if not passed:
            return verdicts
        edited = self.vision.encode([candidates[i].edited for i in passed])  # (P, N, Dv)
        for row, i in enumerate(passed):
            candidate, verdict = candidates[i], verdicts[i]
            change = 1 - F.cosine_similarity(candidate.features.to(edited.device), edited[row], dim=-1)  # (N,)
            change = to_grid(change[None])[0].cpu()  # (g, g)
            mask = torch.from_numpy(candidate.changed.astype(np.float32))[None, None]
            cover = F.adaptive_avg_pool2d(mask, change.shape)[0, 0]  # share of each cell inside the region
            inside = float((change * cover).sum() / cover.sum().clamp_min(1e-6))
            outside = float((change * (1 - cover)).sum() / (1 - cover).sum().clamp_min(1e-6))
            ratio = inside / max(outside, 1e-6)
            verdict.scores.update(
                encoder_inside=round(inside, 6), encoder_outside=round(outside, 6), encoder_ratio=round(ratio, 4)
            )
            if ratio < self.config.min_encoder_ratio:
                verdicts[i] = Verdict(
                    False,
                    "encoder_not_local",
                    f"the vision encoder sees the change {ratio:.2f}x "
                    f"more inside the region than outside (needs {self.config.min_encoder_ratio})",
                    verdict.scores,
                )
        return verdicts


def clip_text(plan: EditPlan) -> tuple[str, float]:
    """What the edited image should show more of (+1), or, for delete, less of (-1)."""
    if plan.type == "delete":
        return f"a {plan.target.name}", -1.0
    if plan.type == "modify":
        return f"a {plan.color} {plan.target.kind}", 1.0
    return f"a {plan.new_object}", 1.0


class ClipFilter:
    def __init__(self, config: FilterConfig) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.config = config
        location = Path(config.model).expanduser()
        source = str(location) if location.exists() else config.model
        self.model = CLIPModel.from_pretrained(source).to(config.device).eval()
        self.processor = CLIPProcessor.from_pretrained(source)

    @torch.no_grad()
    def __call__(self, candidates: list[Candidate]) -> list[Verdict]:
        verdicts = [pixel_check(c, self.config) for c in candidates]
        passed = [i for i, v in enumerate(verdicts) if v.kept]
        if not passed:
            return verdicts
        texts = [clip_text(candidates[i].plan) for i in passed]
        images = [im for i in passed for im in (candidates[i].original, candidates[i].edited)]
        inputs = self.processor(text=[t for t, _ in texts], images=images, return_tensors="pt", padding=True)
        out = self.model(**inputs.to(self.config.device))
        image = F.normalize(out.image_embeds, dim=-1).view(len(passed), 2, -1)  # (P, [original, edited], D)
        text = F.normalize(out.text_embeds, dim=-1)  # (P, D)
        for row, i in enumerate(passed):
            similarity = float(image[row, 0] @ image[row, 1])
            direction = texts[row][1] * float((image[row, 1] - image[row, 0]) @ text[row])
            verdict = verdicts[i]
            verdict.scores.update(clip_image=round(similarity, 6), clip_direction=round(direction, 6))
            if not self.config.clip_min <= similarity <= self.config.clip_max:
                verdicts[i] = Verdict(
                    False,
                    "clip_similarity",
                    f"CLIP image similarity {similarity:.3f} is outside {self.config.clip_min}..{self.config.clip_max}",
                    verdict.scores,
                )
            elif direction < self.config.clip_min_direction:
                verdicts[i] = Verdict(
                    False,
                    "clip_direction",
                    f"the edit moves the image away from its text by "
                    f"{direction:.3f} (needs >= {self.config.clip_min_direction})",
                    verdict.scores,
                )
        return verdicts


Filter = EncoderFilter | ClipFilter


def build_filter(config: FilterConfig, vision: VisionSide) -> Filter:
    return EncoderFilter(config, vision) if config.kind == "encoder" else ClipFilter(config)
