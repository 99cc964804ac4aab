"""Generate images with several LoRAs at once, seeded, deterministic, with a recipe.

Modes (Recipe.mode), all behind the one `generate`:
- merge: static weighted sum (PEFT adapters, or deltas fused into the weights);
- switch: LoRA Switch, one LoRA active at a time, taking turns (fusion.weights);
- composite: LoRA Composite, one UNet pass per LoRA per step, guidance averaged;
- cmlora: CMLoRA, frequency-ordered dominant LoRA with cached residuals (fusion.cmlora);
- gated: a weight per (layer, step, LoRA) from the user's schedule, the learned gate network
  or the frequency prior, applied once per step with one UNet pass (fusion.gates).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fusion.adapters import ActiveLora, AdapterSet, FusedWeights, LayerScales
from fusion.base import BaseModel
from fusion.cmlora import cmlora_image, order_by_frequency
from fusion.composite import composite_image
from fusion.content_guidance import ContentGuidance, content_steps
from fusion.frequency import frequency_profile, high_frequency_score
from fusion.gates import (
    FusedGates,
    GateMap,
    GateNetwork,
    GateTable,
    base_fingerprint,
    gate_table,
    layer_feature_matrix,
    lora_vector,
    prompt_embedding,
)
from fusion.recipe import CONTENT_GUIDED, Recipe, RecipeLora
from fusion.weights import WeightSchedule, validate_block_weights
from styles.errors import WrongFamily
from styles.lora import LoraFile


@dataclass
class LoraUse:
    """A loaded LoRA file and how to apply it in one request."""

    lora: LoraFile
    ref: str
    weight: float = 1.0
    block_weights: dict | None = None
    step_weights: list[float] | None = None
    frequency: list[float] | None = None  # its stored frequency profile, if known
    vector: list[float] | None = None  # its vector for the gate network, if the caller has one
    # the generation settings its style recommends (`RECOMMENDABLE`), used when it is alone
    recommended: dict | None = None

    def __post_init__(self) -> None:
        validate_block_weights(self.block_weights)

    @property
    def user_schedule(self) -> bool:
        return bool(self.block_weights or self.step_weights)


# The settings a style may recommend (the starter pack's manifest records them per style:
# styles/starter/build.py GENERATION_DEFAULTS), and what applies when none is recommended
# (guidance_scale None: the base model's recommended scale).
RECOMMENDABLE = {"guidance_scale": None, "content_guidance": 0.0, "content_guidance_steps": 0.4}


def recommended_settings(uses: list[LoraUse], settings: dict, guidance: float) -> dict:
    """The values of the RECOMMENDABLE settings left as None in `settings`: a style's own when
    its LoRA is the request's only one (a setting chosen for one style says nothing about a
    blend: fusion_quality_content_guidance*.md), else the defaults (`guidance`: the base
    model's scale). Content guidance stays off where it cannot run: in the modes with their
    own loop (recipe.CONTENT_GUIDED) and without classifier-free guidance (a scale of 1 or
    less)."""
    own = (uses[0].recommended or {}) if len(uses) == 1 else {}
    defaults = dict(RECOMMENDABLE, guidance_scale=guidance)
    chosen = {name: own.get(name, default) for name, default in defaults.items()
              if settings.get(name) is None}
    resolved = {**settings, **chosen}
    if "content_guidance" in chosen and (resolved.get("mode", "merge") not in CONTENT_GUIDED
                                         or resolved["guidance_scale"] <= 1):
        chosen["content_guidance"] = 0.0
    return chosen


@dataclass
class GenerationOutput:
    images: list[Image.Image]
    recipes: list[Recipe]
    seconds: float
    gates: GateMap | None = None  # weight per (layer, step, LoRA) as applied
    unet_passes: int | None = None  # UNet calls per image (composite, cmlora)
    seconds_per_image: float = field(init=False)

    def __post_init__(self) -> None:
        self.seconds_per_image = self.seconds / max(1, len(self.images))


class GenerationEngine:
    """One base pipeline and its adapters; one generation at a time (request-scoped weights)."""

    def __init__(self, base: BaseModel, adapter_capacity: int = 16,
                 gate_network: GateNetwork | str | Path | None = "auto") -> None:
        self.base = base
        self.adapters = AdapterSet(base.components, capacity=adapter_capacity)
        self._lock = threading.Lock()
        self.gate_network, self.gate_network_id = self._load_gates(gate_network)
        self.profiles: dict[str, list[float]] = {}  # sha256 → frequency profile
        self._probe_images: dict = {}  # the base model's probe images, for profiling

    def _load_gates(self, source) -> tuple[GateNetwork | None, str]:
        """The learned gate network if one fits this base ("auto": the starter pack's)."""
        if source == "auto":
            from styles.starter.paths import STARTER_DIR

            source = STARTER_DIR / "gates"
            if not (source / "gates.safetensors").is_file():
                return None, ""
        if source is None:
            return None, ""
        net = source if isinstance(source, GateNetwork) else GateNetwork.load(source)
        if net.config.base_fingerprint != base_fingerprint(self.base.pipe):
            return None, ""
        digest = sum(float(p.detach().double().abs().sum()) for p in net.parameters())
        return net, f"{net.config.lora_features}-{digest:.6f}"

    @property
    def native_size(self) -> int:
        pipe = self.base.pipe
        return pipe.unet.config.sample_size * pipe.vae_scale_factor

    def recipe_for(self, prompt: str, uses: list[LoraUse], **settings) -> Recipe:
        loras = [RecipeLora(u.ref, u.lora.sha256, u.weight, u.block_weights, u.step_weights,
                            u.lora.alpha) for u in uses]
        if settings.get("mode") == "gated":
            settings.setdefault("gate_network", self.gate_network_id)
        for side in ("width", "height"):  # the base model's native size unless asked
            if not settings.get(side):
                settings[side] = self.native_size
        # unset: the style's own (one LoRA), else the base model's scale and no content guidance
        settings.update(recommended_settings(uses, settings, self.base.guidance_scale))
        return Recipe(prompt=prompt, base_model=self.base.source, base_family=self.base.family,
                      scheduler=type(self.base.pipe.scheduler).__name__, loras=loras, **settings)

    def profile(self, use: LoraUse) -> list[float]:
        """The LoRA's frequency profile: given with it, cached, or measured now (once)."""
        if use.frequency:
            return list(use.frequency)
        if use.lora.sha256 not in self.profiles:
            self.profiles[use.lora.sha256] = frequency_profile(
                self, use, baselines=self._probe_images)
        return self.profiles[use.lora.sha256]

    def generate(self, recipe: Recipe, uses: list[LoraUse],
                 on_step: callable | None = None, output_type: str = "pil") -> GenerationOutput:
        """Run the recipe with `uses` (same order as recipe.loras); one image per seed.

        `output_type="latent"` stops before the VAE (benchmarks, training)."""
        return self._run(recipe, uses, on_step, output_type, batch=None)

    def generate_many(self, recipes: list[Recipe], uses: list[LoraUse],
                      output_type: str = "pil") -> GenerationOutput:
        """One image per recipe, recipes that differ only in prompt and seed (an upload's probe
        renders), denoised together in one batch where the LoRA weights do not depend on the
        prompt (merge, switch, gated without a learned gate network): each image is the one
        `generate` makes alone, up to float rounding. Other recipes run one by one."""
        first = recipes[0]
        alike = all(dataclasses.replace(r, prompt=first.prompt, seed=first.seed) == first
                    for r in recipes)
        if not alike or first.num_images != 1:
            raise ValueError("generate_many takes recipes that differ only in prompt and seed, "
                             "one image each")
        learned = first.mode == "gated" and self._blends(uses)  # gates per prompt
        if first.mode in ("composite", "cmlora") or learned or len(recipes) == 1:
            outputs = [self.generate(r, uses, output_type=output_type) for r in recipes]
            return GenerationOutput([o.images[0] for o in outputs],
                                    [o.recipes[0] for o in outputs],
                                    sum(o.seconds for o in outputs), outputs[0].gates,
                                    outputs[0].unet_passes)
        return self._run(first, uses, None, output_type,
                         batch=[(r.prompt, r.seed) for r in recipes])

    def _run(self, recipe: Recipe, uses: list[LoraUse], on_step, output_type: str,
             batch: list[tuple[str, int]] | None) -> GenerationOutput:
        # 1. check the LoRAs fit this base
        for use in uses:
            if use.lora.family not in (self.base.family, "unknown"):
                raise WrongFamily(use.lora.path, f"it is a {use.lora.family} LoRA and the base "
                                  f"model is {self.base.family}.", "Pick a matching LoRA.")
        if len({u.lora.sha256 for u in uses}) < len(uses):
            raise ValueError("the same LoRA file is listed twice; give it once with one weight")
        if recipe.mode == "gated" and recipe.gate_network != self.gate_network_id:
            made, have = recipe.gate_network or "none", self.gate_network_id or "none"
            raise ValueError(f"the recipe was made with gate network '{made}' and this engine "
                             f"has '{have}': load the same gates to replay it")
        # 2. frequency profiles for the modes that use them (measured once per file)
        profiles = None
        if recipe.mode in ("cmlora", "gated") and len(uses) > 1:
            profiles = [self.profile(u) for u in uses]
        start = time.perf_counter()
        with self._lock:
            # 3. activate this request's adapters only (injected outside inference mode, so
            #    their tensors stay ordinary tensors that training code can use too)
            with torch.no_grad():
                active = [ActiveLora(self.adapters.ensure(u.lora), u.lora) for u in uses]
            return self._generate_locked(recipe, uses, active, profiles, on_step, start,
                                         output_type, batch)

    def _generate_locked(self, recipe: Recipe, uses: list[LoraUse], active: list[ActiveLora],
                         profiles: list | None, on_step, start: float, output_type: str,
                         batch: list[tuple[str, int]] | None) -> GenerationOutput:
        by_name = {a.adapter: use for a, use in zip(active, uses, strict=True)}
        schedule = WeightSchedule(by_name, recipe.steps,
                                  "switch" if recipe.mode == "switch" else "merge",
                                  recipe.switch_period)
        if recipe.apply == "fused" and recipe.mode != "gated" and any(
                u.step_weights for u in uses):
            raise ValueError("step weights change during denoising: use apply='adapters'")
        with torch.inference_mode():
            # 4. the weight of every LoRA per layer and step, and what applies it
            sources = None
            if recipe.mode == "gated" and active:
                schedule, sources = self._gates(recipe, uses, active, profiles)
            order = list(range(len(active)))
            high = len(active)
            if recipe.mode == "cmlora" and len(active) > 1:
                order, high = order_by_frequency([high_frequency_score(p) for p in profiles])
            if recipe.mode in ("composite", "cmlora") and active:
                applied = [LayerScales(self.adapters, [active[j]], schedule) for j in order]
                applied.append(LayerScales(self.adapters, active, schedule))  # text encoders
            elif recipe.mode == "gated" and recipe.apply == "fused" and active:
                applied = [FusedGates(self.adapters, active, schedule, recipe.steps,
                                      recipe.gate_tolerance)]
            elif active:
                kind = FusedWeights if recipe.apply == "fused" else LayerScales
                applied = [kind(self.adapters, active, schedule)]
            else:
                applied = []
            gates = self._gate_map(recipe, uses, active, schedule, sources) if active else None
            counter = {"unet_passes": 0}
            try:
                if batch:
                    images = self._pipeline_images(recipe, batch, applied, None, output_type,
                                                   counter)
                else:
                    images = [self._one_image(recipe, i, applied, on_step, output_type, high,
                                              counter) for i in range(recipe.num_images)]
            finally:
                for item in applied:
                    item.release()
        runs = 1 if batch else max(1, len(images))  # denoising loops run
        if gates is not None and isinstance(applied[0], FusedGates):
            gates.rewrites = applied[0].rewrites // runs
        seconds = time.perf_counter() - start
        passes = counter["unet_passes"] // runs or None
        recipes = ([dataclasses.replace(recipe, prompt=p, seed=seed) for p, seed in batch]
                   if batch else [recipe.for_image(i) for i in range(len(images))])
        return GenerationOutput(images, recipes, seconds, gates, passes)

    def _blends(self, uses: list[LoraUse]) -> bool:
        """Whether the learned gates weigh these LoRAs: only two or more are blended; one LoRA
        alone runs at its own weight (and schedule), exactly as merge runs it."""
        return self.gate_network is not None and len(uses) > 1

    def _gates(self, recipe: Recipe, uses: list[LoraUse], active: list[ActiveLora],
               profiles: list | None) -> tuple[GateTable, list[str]]:
        """The gate table of a gated request: user schedule, else learned, else prior."""
        merge = WeightSchedule({a.adapter: u for a, u in zip(active, uses, strict=True)},
                               recipe.steps)
        targets = self._unet_targets(active)
        user = merge.tabulate([a.adapter for a in active], targets)
        learned = None
        if self._blends(uses) and not all(u.user_schedule for u in uses):
            learned = self._learned_gates(recipe, uses, profiles, targets)
        scores = [high_frequency_score(p) for p in profiles] if profiles else None
        table, sources = gate_table(user, [u.user_schedule for u in uses],
                                    [u.weight for u in uses], learned, scores)
        fallback = {a.adapter: u.weight for a, u in zip(active, uses, strict=True)}
        return GateTable([a.adapter for a in active], targets, table, fallback), sources

    def _learned_gates(self, recipe: Recipe, uses: list[LoraUse], profiles: list,
                       targets: list[str]) -> np.ndarray:
        """(steps, layers, k) gates of the learned network for this prompt and these LoRAs."""
        pipe, net = self.base.pipe, self.gate_network
        vectors = [u.vector or lora_vector(p) for u, p in zip(uses, profiles, strict=True)]
        if any(len(v) != net.config.lora_dim for v in vectors):
            raise ValueError(f"the gate network takes LoRA vectors of length "
                             f"{net.config.lora_dim} ({net.config.lora_features})")
        for layer in self.adapters.layers():  # the prompt as the base model reads it
            layer.enable_adapters(False)
        prompt = prompt_embedding(pipe, [recipe.prompt])
        scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
        scheduler.set_timesteps(recipe.steps)
        timesteps = scheduler.timesteps[: recipe.steps]
        unet_order = [t.split(".", 1)[1] for t in self.base.table.order if t.startswith("unet.")]
        layers = layer_feature_matrix([t.split(".", 1)[1] for t in targets], unet_order,
                                      len(pipe.unet.config.block_out_channels))
        gates = net(layers, timesteps, prompt.expand(len(timesteps), -1),
                    torch.tensor(vectors, dtype=torch.float32))
        return gates.double().numpy()

    def _unet_targets(self, active: list[ActiveLora]) -> list[str]:
        names = {a.adapter for a in active}
        return [f"{component}.{path}" for component, path, layer in self.adapters.named_layers()
                if component == "unet" and names & set(layer.lora_A)]

    def _gate_map(self, recipe: Recipe, uses: list[LoraUse], active: list[ActiveLora],
                  weight_fn, sources: list[str] | None) -> GateMap:
        names = [a.adapter for a in active]
        layers = [(f"{c}.{p}", layer) for c, p, layer in self.adapters.named_layers()
                  if set(names) & set(layer.lora_A)]
        targets = [t for t, _ in layers]
        present = np.array([[n in layer.lora_A for n in names] for _, layer in layers])
        values = weight_fn.tabulate(names, targets).transpose(1, 0, 2)
        values = values * present.reshape(len(targets), 1, len(names))  # 0: no module there
        return GateMap(targets, [u.ref for u in uses], recipe.steps, values,
                       sources or ["user"] * len(uses), present=present)

    def _one_image(self, recipe: Recipe, index: int, applied: list, on_step,
                   output_type: str, high: int, counter: dict) -> Image.Image:
        # 5. seed per image, so any one image replays alone
        generator = torch.Generator("cpu").manual_seed(recipe.seed + index)
        progress = lambda step: on_step and on_step(index, step, recipe.steps)  # noqa: E731
        if recipe.mode == "composite" and applied:  # one pass per LoRA per step
            counter["unet_passes"] += recipe.steps * (len(applied) - 1)
            return composite_image(
                self.base.pipe, recipe.prompt, recipe.negative_prompt, recipe.steps,
                recipe.guidance_scale, recipe.width, recipe.height, generator, applied[:-1],
                applied[-1], progress, output_type)
        if recipe.mode == "cmlora" and applied:
            return cmlora_image(
                self.base.pipe, recipe.prompt, recipe.negative_prompt, recipe.steps,
                recipe.guidance_scale, recipe.width, recipe.height, generator, applied[:-1],
                applied[-1], high, recipe.cmlora_cache, progress, output_type, counter)
        return self._pipeline_images(recipe, [(recipe.prompt, recipe.seed + index)], applied,
                                     progress, output_type, counter)[0]

    def _pipeline_images(self, recipe: Recipe, batch: list[tuple[str, int]], applied: list,
                         progress, output_type: str, counter: dict) -> list:
        """(prompt, seed) pairs denoised together by the diffusers pipeline's own loop, with
        this step's LoRA weights set before each step."""
        counter["unet_passes"] += recipe.steps
        scales = applied[0] if applied and isinstance(applied[0], LayerScales | FusedGates) \
            else None
        if isinstance(scales, LayerScales):
            scales.activate()
        if scales:
            scales.apply(0)
        guard = ContentGuidance(
            self.base.pipe.unet, applied, recipe.content_guidance, recipe.guidance_scale,
            content_steps(recipe.steps, recipe.content_guidance_steps)) \
            if recipe.content_guidance and applied else None

        def step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            # 6. weights for the next step
            if scales and step + 1 < recipe.steps:
                scales.apply(step + 1)
            if guard:
                guard.step = step + 1
            if progress:
                progress(step + 1)
            return callback_kwargs

        # 7. the diffusers pipeline's own denoising loop; one generator per image, so each
        #    image starts from the noise it would have alone
        prompts = [p for p, _ in batch]
        try:
            result = self.base.pipe(
                prompt=prompts, negative_prompt=[recipe.negative_prompt] * len(batch)
                if recipe.negative_prompt else None,
                num_inference_steps=recipe.steps, guidance_scale=recipe.guidance_scale,
                width=recipe.width, height=recipe.height,
                generator=[torch.Generator("cpu").manual_seed(seed) for _, seed in batch],
                callback_on_step_end=step_end, output_type=output_type,
            )
        finally:
            if guard:
                guard.release()
                counter["unet_passes"] += guard.passes
        return list(result.images)
