"""Several LoRAs on one base model through PEFT's LoRA layers, with weights per layer and step.

Adapters are injected once per file (keyed by sha256) and kept; each request activates only
its own adapters and sets their scaling, under the engine's lock, so requests never see each
other's weights. "Fused" applies the summed delta to the base weights and restores the
original tensors afterwards (exactly, not by subtraction).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from styles.lora import LoraFile


@dataclass
class ActiveLora:
    """One LoRA in one request and the name of its PEFT adapter; weights come from a WeightFn."""

    adapter: str
    lora: LoraFile


def adapter_name(lora: LoraFile) -> str:
    return "l" + lora.sha256[:16]


class AdapterSet:
    """PEFT LoRA layers on a pipeline's components, keyed by file hash, LRU-bounded."""

    def __init__(self, components: dict[str, torch.nn.Module], capacity: int = 16) -> None:
        self.components = components
        self.capacity = capacity
        self._loaded: OrderedDict[str, LoraFile] = OrderedDict()

    def ensure(self, lora: LoraFile) -> str:
        """Inject the file's adapter if it is not loaded yet; return its adapter name."""
        name = adapter_name(lora)
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return name
        for component, model in self.components.items():
            modules = {m.path: m for m in lora.modules.values() if m.component == component}
            if not modules:
                continue
            config = LoraConfig(
                r=max(m.rank for m in modules.values()),
                lora_alpha=max(m.rank for m in modules.values()),
                target_modules=sorted(modules),
                rank_pattern={p: m.rank for p, m in modules.items()},
                alpha_pattern={p: m.rank for p, m in modules.items()},  # PEFT scaling = 1
            )
            inject_adapter_in_model(config, model, adapter_name=name)
            state = {}
            dtype = model.dtype  # once: diffusers walks every submodule to answer it
            for path, module in modules.items():
                state[f"{path}.lora_A.weight"] = module.down.to(dtype)
                state[f"{path}.lora_B.weight"] = (module.up * module.scale).to(dtype)
            result = set_peft_model_state_dict(model, state, adapter_name=name)
            if getattr(result, "unexpected_keys", None):
                raise RuntimeError(f"{lora.path.name}: PEFT did not place "
                                   f"{len(result.unexpected_keys)} tensors")
        self._loaded[name] = lora
        self._evict()
        return name

    def _evict(self) -> None:
        while len(self._loaded) > self.capacity:
            name, _ = self._loaded.popitem(last=False)
            for layer in self.layers():
                if name in layer.lora_A:
                    layer.delete_adapter(name)

    def layers(self) -> list[LoraLayer]:
        return [m for model in self.components.values() for m in model.modules()
                if isinstance(m, LoraLayer)]

    def fusion_targets(self, active: list[ActiveLora]
                       ) -> list[tuple[str, torch.nn.Module, list[tuple[int, object]]]]:
        """For fusing deltas into the weights: every adapter layer switched off, and per target
        module its base layer with (index in `active`, LoraModule) of each LoRA that has it."""
        for layer in self.layers():
            layer.enable_adapters(False)
        by_target: dict[str, list[tuple[int, object]]] = {}
        for index, item in enumerate(active):
            for target, module in item.lora.modules.items():
                by_target.setdefault(target, []).append((index, module))
        modules = {f"{c}.{p}": m for c, model in self.components.items()
                   for p, m in model.named_modules()}
        out = []
        for target, uses in by_target.items():
            owner = modules.get(target)
            base = getattr(owner, "base_layer", owner)
            if base is not None:
                out.append((target, base, uses))
        return out

    def named_layers(self) -> list[tuple[str, str, LoraLayer]]:
        """(component, module path, layer) for every PEFT LoRA layer."""
        return [(component, path, module) for component, model in self.components.items()
                for path, module in model.named_modules() if isinstance(module, LoraLayer)]


WeightFn = Callable[[str, str, int], float]  # (adapter, "component.path", step) -> weight


class LayerScales:
    """Sets PEFT scaling per (layer, adapter) from a weight function, step by step."""

    def __init__(self, adapters: AdapterSet, active: list[ActiveLora], weight_fn: WeightFn):
        self.weight_fn = weight_fn
        names = [a.adapter for a in active]
        self.layers: list[tuple[LoraLayer, list[str]]] = []
        self.entries: list[tuple[LoraLayer, str, str]] = []
        for component, path, layer in adapters.named_layers():
            present = [n for n in names if n in layer.lora_A]
            self.layers.append((layer, present))
            for name in present:
                self.entries.append((layer, name, f"{component}.{path}"))
        self.activate()

    def activate(self) -> None:
        """Make exactly these adapters the active ones on every LoRA layer."""
        for layer, present in self.layers:
            layer.enable_adapters(bool(present))
            if present:
                layer.set_adapter(present)

    def apply(self, step: int) -> None:
        for layer, name, target in self.entries:
            layer.scaling[name] = self.weight_fn(name, target, step)

    @contextmanager
    def bypassed(self) -> Iterator[None]:
        """The base model alone for the duration (every adapter layer of the request off)."""
        on = [layer for layer, present in self.layers if present]
        for layer in on:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in on:
                layer.enable_adapters(True)

    def release(self) -> None:
        for layer, _ in self.layers:
            layer.enable_adapters(False)


class FusedWeights:
    """Adds the weighted deltas into the base weights; `restore` puts the originals back."""

    def __init__(self, adapters: AdapterSet, active: list[ActiveLora], weight_fn: WeightFn):
        self.saved: list[tuple[torch.nn.Module, torch.Tensor]] = []
        for target, base, uses in adapters.fusion_targets(active):
            original = base.weight.data
            delta = sum(weight_fn(active[j].adapter, target, 0) * module.delta(torch.float32)
                        for j, module in uses)
            base.weight.data = (original.float() + delta).to(original.dtype)
            self.saved.append((base, original))

    def bypassed(self):
        """The base model alone for the duration (the original tensors swapped back in)."""
        return original_weights(self.saved)

    def release(self) -> None:
        for base, original in self.saved:
            base.weight.data = original
        self.saved.clear()


@contextmanager
def original_weights(saved: list[tuple[torch.nn.Module, torch.Tensor]]) -> Iterator[None]:
    """Swap each (layer, original tensor) back in for the duration, then the fused tensors
    again: pointer swaps, nothing recomputed."""
    fused = [base.weight.data for base, _ in saved]
    for base, original in saved:
        base.weight.data = original
    try:
        yield
    finally:
        for (base, _), tensor in zip(saved, fused, strict=True):
            base.weight.data = tensor
