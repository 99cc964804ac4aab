"""Read any LoRA file into a checked `LoraFile`, or refuse it with a typed reason."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from styles.architectures import ModuleTable, reference_table
from styles.errors import (
    LoraRefused,
    NoMatchingModules,
    NotALora,
    NotAnImageModel,
    ShapeMismatch,
    WrongFamily,
)
from styles.families import FAMILY_LABELS, detect_family
from styles.formats import ParsedKeys, RawModule, exact_factors, parse_keys
from styles.lora import LoraFile, LoraMetadata, LoraModule, parse_metadata
from styles.safe_read import ReadLimits, SafetensorsContent, read_safetensors


@dataclass(frozen=True)
class ReadOptions:
    """How to read a file: against which base, with which limits, with a user-given alpha."""

    base_table: ModuleTable | None = None
    base_family: str | None = None
    alpha: float | None = field(default=None, metadata={"help": "overrides every other alpha"})
    limits: ReadLimits = field(default_factory=ReadLimits)


def read_lora(path: str | Path, options: ReadOptions | None = None) -> LoraFile:
    """Check, parse and resolve a LoRA file; raise a `LoraRefused` subclass if it is unusable."""
    path = Path(path)
    options = options or ReadOptions()
    base_family = options.base_table.family if options.base_table else options.base_family
    # 1. bytes: no pickle, framing, size, header, non-finite values
    content = read_safetensors(path, options.limits)
    # 2. keys into raw modules
    parsed = parse_keys(content.tensors, content.metadata)
    if not parsed.modules:
        raise NotALora(path, "it holds no LoRA weights (no lora_down/up, lora_A/B, LoHa or LoKr "
                       "keys).", "Upload a LoRA file, not a full checkpoint or embedding.")
    # 3. metadata as hints, the family from the tensors
    metadata = parse_metadata(content.metadata)
    family, evidence = detect_family(parsed)
    try:
        return _checked(path, options, base_family, content, parsed, metadata, family, evidence)
    except LoraRefused as refusal:
        refusal.details.update(format=parsed.format, family=family, metadata=metadata.to_dict(),
                               sha256=content.sha256)
        raise


def _checked(path: Path, options: ReadOptions, base_family: str | None,
             content: SafetensorsContent, parsed: ParsedKeys, metadata: LoraMetadata,
             family: str, evidence: str) -> LoraFile:
    warnings: list[str] = []
    if parsed.unparsed:
        warnings.append(f"{len(parsed.unparsed)} keys were not recognised and are ignored "
                        f"(e.g. {parsed.unparsed[0]}).")
    if metadata.family_hint and family in FAMILY_LABELS and metadata.family_hint != family \
            and family not in ("unknown", "not-image"):
        warnings.append(f"the metadata says {FAMILY_LABELS[metadata.family_hint]} but the tensors "
                        f"show {FAMILY_LABELS[family]} ({evidence}); the tensors decide.")
    if family == "unknown":
        warnings.append(f"the tensors do not tell which base model it is for ({evidence}); "
                        "it is checked module by module against the base it is used with.")
    if family == "not-image":
        raise NotAnImageModel(path, f"this LoRA is not for an image model ({evidence}).",
                              "Loratlas uses LoRAs for Stable Diffusion models only.")
    if base_family not in (None, "unknown") and family not in (base_family, "unknown"):
        raise WrongFamily(path, f"this LoRA is for {FAMILY_LABELS[family]} ({evidence}), but the "
                          f"loaded base model is {FAMILY_LABELS.get(base_family, base_family)}.",
                          "Load a matching base model, or pick a LoRA made for this one.")
    # 4. alpha: the user's, else per-module tensors, else the file's or a sibling's config
    alpha, alpha_note = _file_alpha(path, parsed, options.alpha)
    warnings.append(alpha_note)
    # 5. resolve names against the base (or the family's reference) and check shapes
    table = options.base_table or reference_table(family)
    modules = _resolve(path, parsed, table, alpha, options.alpha is not None, warnings)
    dtype = max(content.dtypes, key=content.dtypes.get) if content.dtypes else "unknown"
    return LoraFile(path=path, sha256=content.sha256, format=parsed.format, family=family,
                    modules=modules, metadata=metadata, dtype=dtype, alpha=alpha,
                    warnings=warnings)


def _file_alpha(path: Path, parsed: ParsedKeys, user_alpha: float | None
                ) -> tuple[float | None, str]:
    """The file-level alpha and a note saying where it came from."""
    if user_alpha is not None:
        return user_alpha, f"alpha {user_alpha:g} given by the user overrides the file."
    alphas = {float(m.parts["alpha"].float())
              for m in parsed.modules.values() if "alpha" in m.parts}
    if alphas:
        if len(alphas) == 1:
            return alphas.pop(), "alpha from the file's .alpha tensors."
        return None, f"alpha varies per module ({min(alphas):g}–{max(alphas):g}), from the file."
    alpha, source = _config_alpha(path, parsed.metadata)
    if alpha is not None:
        return alpha, f"alpha {alpha:g} {source}."
    return None, ("no alpha in the file or beside it: scale 1.0. If its author gives an alpha, "
                  "pass it (inspect --alpha, or alpha in the upload form).")


def _config_alpha(path: Path, metadata: dict[str, str]) -> tuple[float | None, str | None]:
    if "lora_adapter_metadata" in metadata:
        try:
            config = json.loads(metadata["lora_adapter_metadata"])
            alphas = {v for k, v in config.items() if k.endswith("lora_alpha")}
            if len(alphas) == 1:
                return float(alphas.pop()), "from lora_adapter_metadata"
        except (json.JSONDecodeError, TypeError, ValueError):
            pass
    sibling = path.with_name("adapter_config.json")
    if sibling.is_file():
        try:
            return float(json.loads(sibling.read_text())["lora_alpha"]), "from adapter_config.json"
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
    return None, None


def _legacy_block_order(order: list[str]) -> list[str]:
    """Old diffusers (< 0.12) built transformer blocks as attn1, ff, attn2: its module order."""
    rank = {"attn1": 0, "ff": 1, "attn2": 2}
    first_seen: dict[str, int] = {}
    keys = []
    for index, target in enumerate(order):
        head, sep, tail = target.partition(".transformer_blocks.")
        block, _, rest = tail.partition(".")
        group = f"{head}/{block}" if sep else target
        first_seen.setdefault(group, index)
        keys.append((first_seen[group], rank.get(rest.split(".")[0], 3), index))
    return [order[i] for i in sorted(range(len(order)), key=keys.__getitem__)]


def _index_orders(parsed: ParsedKeys, table: ModuleTable) -> dict[str, list[str]]:
    """cloneofsimo index → module, per component: the model order (current or legacy) in which
    every indexed tensor fits its module's shape."""
    classes = _cloneofsimo_classes(parsed)
    orders: dict[str, list[str]] = {}
    for component, names in classes.items():
        current = table.in_order(component, names)
        indexed = [m for m in parsed.modules.values()
                   if m.component == component and m.style == "index"]
        for candidate in (current, _legacy_block_order(current)):
            if all(_fits(m, candidate, table) for m in indexed):
                orders[component] = candidate
                break
        else:
            orders[component] = current
    return orders


def _fits(raw: RawModule, order: list[str], table: ModuleTable) -> bool:
    index = int(raw.name)
    if index >= len(order) or "down" not in raw.parts:
        return False
    spec = table.specs[order[index]]
    return tuple(raw.parts["up"].shape[:1]) + tuple(raw.parts["down"].shape[1:2]) == (
        spec.out_features, spec.in_features)


def _target_for(raw: RawModule, table: ModuleTable | None, orders: dict[str, list[str]]
                ) -> str | None:
    if raw.style == "index":
        order = orders.get(raw.component, [])
        index = int(raw.name)
        return order[index] if index < len(order) else None
    if table is None:
        return f"{raw.component}.{raw.name}" if raw.style == "path" else None
    return table.resolve(raw.component, raw.name)


def _resolve(path: Path, parsed: ParsedKeys, table: ModuleTable | None,
             config_alpha: float | None, user_alpha: bool, warnings: list[str]
             ) -> dict[str, LoraModule]:
    orders = _index_orders(parsed, table) if table else {}
    modules: dict[str, LoraModule] = {}
    unresolved: list[str] = []
    mismatched: list[str] = []
    for raw in parsed.modules.values():
        try:
            up, down, file_rank = exact_factors(raw)
        except (KeyError, ValueError) as exc:
            warnings.append(f"module {raw.name} skipped: {exc}.")
            continue
        alpha = config_alpha
        if "alpha" in raw.parts and not user_alpha:
            alpha = float(raw.parts["alpha"].float())
        scale = alpha / file_rank if (alpha is not None and file_rank) else 1.0
        target = _target_for(raw, table, orders)
        if target is None:
            unresolved.append(f"{raw.component}:{raw.name}")
            continue
        spec = table.specs[target] if table else None
        kind = spec.kind if spec else ("conv" if raw.parts.get("down", up).ndim == 4 else "linear")
        if spec is not None:
            width = spec.in_features * spec.kernel_size[0] * spec.kernel_size[1]
            if (up.shape[0], down.shape[1]) != (spec.out_features, width):
                mismatched.append(f"{target} (file {up.shape[0]}×{down.shape[1]}, base "
                                  f"{spec.out_features}×{width})")
                continue
            if kind == "conv":
                down = down.reshape(down.shape[0], spec.in_features, *spec.kernel_size)
                up = up.reshape(*up.shape, 1, 1)
        modules[target] = LoraModule(target, kind, down, up, scale, raw.algo,
                                     file_rank or down.shape[0])
    base = f"the {table.family} base" if table else "the base"
    if mismatched:
        raise ShapeMismatch(path, f"{len(mismatched)} tensors do not fit {base} model, e.g. "
                            f"{mismatched[0]}.", "This LoRA was trained for another model size; "
                            "use it with the model it was made for.")
    if not modules:
        raise NoMatchingModules(path, f"none of its {len(parsed.modules)} modules maps to a module "
                                f"of {base} model (e.g. {unresolved[:1]}).",
                                "Check that the LoRA is for this kind of model.")
    if unresolved:
        warnings.append(f"{len(unresolved)} of {len(parsed.modules)} modules match no module of "
                        f"{base} model and are ignored (e.g. {unresolved[0]}).")
    return modules


def _cloneofsimo_classes(parsed: ParsedKeys) -> dict[str, set[str]]:
    classes: dict[str, set[str]] = {}
    raw = parsed.metadata
    for component in {m.component for m in parsed.modules.values() if m.style == "index"}:
        names = json.loads(raw.get(component, "[]")) if raw.get(component) else []
        defaults = {"unet": ["CrossAttention", "Attention", "GEGLU"],
                    "text_encoder": ["CLIPAttention"]}
        names = set(names or defaults.get(component, []))
        if "CrossAttention" in names:
            names.add("Attention")  # the old diffusers name of the same class
        classes[component] = names
    return classes


def refusal_report(error: LoraRefused) -> dict:
    return error.to_dict()
