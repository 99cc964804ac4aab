"""`loratlas` command line: inspect, generate, serve. JSON output is a stable interface."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size '{text}' must look like 512x512") from None
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loratlas", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def base_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--base-model", help="diffusers folder, .safetensors checkpoint or hub id")
        p.add_argument("--base-config", help="diffusers folder describing a single-file model")
        p.add_argument("--library", help="library folder (default: a per-user data folder "
                       "seeded with the starter pack; loose .safetensors in it are imported)")
        p.add_argument("--device", help="cpu, cuda or auto (default)")

    p = sub.add_parser("inspect", help="check one LoRA file and describe it")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.add_argument("--alpha", type=float, help="the LoRA's alpha, if its author gives one")
    p.add_argument("--base-family", choices=["sd1", "sd2", "sdxl", "flux", "starter"],
                   help="refuse the file unless it is for this family")
    base_args(p)

    p = sub.add_parser("generate", help="generate images with several LoRAs at once")
    p.add_argument("prompt", nargs="?")
    p.add_argument("--lora", action="append", default=[], metavar="NAME_OR_PATH[:WEIGHT]")
    p.add_argument("--lora-json", action="append", default=[], metavar="JSON",
                   help='{"ref": ..., "weight": 1, "block_weights": {...}, "step_weights": [1, 0]}')
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--size", type=_size)
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the style's when it is the "
                        "only LoRA and recommends one, else the base model's own: 7.5 for "
                        "Stable Diffusion, the value the starter pack records)")
    p.add_argument("--negative", default="")
    p.add_argument("--apply", choices=["adapters", "fused"], default="adapters")
    p.add_argument("--mode", choices=["merge", "switch", "composite", "cmlora", "gated"],
                   default="merge", help="how several LoRAs combine (see README)")
    p.add_argument("--switch-period", type=int, default=5)
    p.add_argument("--cmlora-cache", choices=["residual", "none"], default="residual",
                   help="cmlora: reuse each LoRA's cached residual (residual) or run every "
                   "LoRA at every step (none)")
    p.add_argument("--content-guidance", type=float, metavar="SCALE",
                   help="add the base model's own guidance (LoRAs bypassed) over the first "
                   "steps, so a LoRA cannot make the model ignore the prompt's content; one "
                   "more UNet pass on those steps (0: off; default: what the style recommends "
                   "when it is the only LoRA, else off; see README)")
    p.add_argument("--content-guidance-steps", type=float, metavar="SHARE",
                   help="the share of the steps, from the first, that content guidance runs on "
                   "(default: the style's recommended share, else 0.4)")
    p.add_argument("--gate-tolerance", type=float, default=0.05,
                   help="gated with --apply fused: rewrite a layer when a gate moves more")
    p.add_argument("--auto", type=int, nargs="?", const=3, default=0, metavar="K",
                   help="add the K styles (default 3) retrieval finds for the prompt")
    p.add_argument("--gates-out", metavar="FILE",
                   help="write the gate map (layers × steps × LoRAs) as JSON")
    p.add_argument("--recipe", help="replay a recipe (.json, or a PNG written by Loratlas)")
    p.add_argument("--out", default="out")
    p.add_argument("--json", action="store_true")
    base_args(p)

    p = sub.add_parser("retrieve", help="find the styles that fit a prompt")
    p.add_argument("prompt", nargs="?")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--prompts-file", help="one prompt per line; one JSON object per line out")
    p.add_argument("--json", action="store_true")
    base_args(p)

    p = sub.add_parser("library", help="list, import, edit and remove styles")
    library = p.add_subparsers(dest="library_command", required=True)
    item = library.add_parser("list", help="the styles in the library")
    item.add_argument("--search", default="", help="text in name, description, tags")
    item.add_argument("--family")
    item.add_argument("--json", action="store_true")
    base_args(item)
    item = library.add_parser("import", help="add every .safetensors file of a folder")
    item.add_argument("folder")
    item.add_argument("--json", action="store_true")
    base_args(item)
    item = library.add_parser("show", help="one style's card")
    item.add_argument("id")
    base_args(item)
    item = library.add_parser("edit", help="change a style's name, tags or description")
    item.add_argument("id")
    item.add_argument("--name")
    item.add_argument("--tags", help="comma-separated")
    item.add_argument("--description")
    base_args(item)
    item = library.add_parser("remove", help="delete a style (row, file, index entry, map)")
    item.add_argument("id")
    base_args(item)

    p = sub.add_parser("starter", help="the starter pack")
    starter = p.add_subparsers(dest="starter_command", required=True)
    b = starter.add_parser("build", help="regenerate the starter pack from scratch (resumable)")
    b.add_argument("--stages", default="clip,base,loras,judges,retrieval")
    b.add_argument("--unet-steps", type=int)
    b.add_argument("--lora-steps", type=int,
                   help="steps of every style LoRA that BuildPlan.lora_tuning gives no steps "
                        "of its own (default 400)")
    b.add_argument("--lora-ema", type=float, metavar="DECAY",
                   help="decay of the moving average kept of each style LoRA's weights "
                        "(default 0.99, as shipped; 0 keeps the last step's weights; "
                        "measured in benchmarks/lora_recipe.py)")
    b.add_argument("--schedule-steps", type=int,
                   help="fine-tuning steps that move an epsilon-prediction base to zero-SNR v")

    p = sub.add_parser("serve", help="launch the web app")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    base_args(p)
    return parser


def _service(args: argparse.Namespace):
    from app.service import LoratlasService, ServiceConfig

    return LoratlasService(ServiceConfig.from_env(
        base_model=args.base_model, base_config=args.base_config, library=args.library,
        device=args.device))


def cmd_inspect(args: argparse.Namespace) -> int:
    service = _service(args)
    result = service.inspect(args.file, alpha=args.alpha, base_family=args.base_family,
                             against_base=bool(args.base_model))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        status = "usable" if result.ok else "REFUSED"
        print(f"{Path(args.file).name}: {status}")
        print(f"  format {result.format}, family {result.family}, rank {result.rank}, "
              f"alpha {result.alpha}, {result.modules} modules, {result.dtype}")
        if result.metadata.get("name"):
            print(f"  name: {result.metadata['name']}")
        for warning in result.warnings:
            print(f"  note: {warning}")
        for error in result.errors:
            print(f"  error: {error['message']}")
    return 0 if result.ok else 2


def cmd_generate(args: argparse.Namespace) -> int:
    from app.service import GenerateRequest, LoraRequest, ServiceError
    from fusion.recipe import Recipe

    service = _service(args)
    try:
        if args.recipe:
            recipe = Recipe.load(args.recipe)
            if not service.config.base_model:
                service = _service(argparse.Namespace(**{**vars(args),
                                                         "base_model": recipe.base_model}))
            result = service.replay(recipe, args.out)
        else:
            if not args.prompt:
                raise ServiceError("give a PROMPT or --recipe FILE")
            loras = [LoraRequest.parse(t) for t in args.lora]
            loras += [LoraRequest(**json.loads(t)) for t in args.lora_json]
            width, height = args.size or (None, None)
            result = service.generate(GenerateRequest(
                prompt=args.prompt, loras=loras, steps=args.steps, seed=args.seed,
                num_images=args.num_images, width=width, height=height,
                guidance_scale=args.guidance, negative_prompt=args.negative, apply=args.apply,
                mode=args.mode, switch_period=args.switch_period,
                cmlora_cache=args.cmlora_cache, gate_tolerance=args.gate_tolerance,
                content_guidance=args.content_guidance,
                content_guidance_steps=args.content_guidance_steps, auto=args.auto), args.out)
        if args.gates_out:
            if result.gates is None:
                raise ServiceError("no gate map: the request used no LoRA")
            Path(args.gates_out).write_text(json.dumps(result.gates))
    except (ServiceError, ValueError, OSError) as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        else:
            print(f"loratlas generate: {exc}", file=sys.stderr)
        return 2
    payload = {"ok": True, **result.to_json()}
    if args.recipe and args.recipe.lower().endswith(".png"):
        payload["identical_to_source"] = _same_pixels(args.recipe, result.files[0])
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        for hit in payload.get("styles", []):
            print(f"style {hit['slug']} (retrieved, score {hit['score']:.2f})")
        for path in result.files:
            print(path)
        print(f"{result.seconds_per_image:.2f} s per image")
        if "identical_to_source" in payload:
            print(f"identical to {args.recipe}: {payload['identical_to_source']}")
    return 0


def _same_pixels(a: str, b: str) -> bool:
    import numpy as np
    from PIL import Image

    with Image.open(a) as first, Image.open(b) as second:
        return bool(np.array_equal(np.asarray(first), np.asarray(second)))


def cmd_serve(args: argparse.Namespace) -> int:
    from app.web import launch

    launch(_service(args), host=args.host, port=args.port)
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    from app.service import ServiceError

    service = _service(args)
    prompts = [args.prompt] if args.prompt else []
    if args.prompts_file:
        prompts += [line.strip() for line in Path(args.prompts_file).read_text().splitlines()
                    if line.strip()]
    if not prompts:
        print("loratlas retrieve: give a PROMPT or --prompts-file FILE", file=sys.stderr)
        return 2
    try:
        for prompt in prompts:
            result = service.retrieve(prompt, k=args.k)
            if args.json or args.prompts_file:
                print(json.dumps(result.to_json()), flush=True)
            else:
                print(prompt)
                for hit in result.hits:
                    reasons = hit["reasons"]
                    print(f"  {hit['slug']:<16} {hit['score']:6.2f}  views {reasons['views']} "
                          f"words {reasons['matched_words']}")
                if not result.hits:
                    print("  (no style: nothing in the library fits above the threshold)")
    except ServiceError as exc:
        print(f"loratlas retrieve: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_starter(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from styles.starter.build import BuildPlan, build

    plan = BuildPlan()
    if args.unet_steps:
        plan = replace(plan, unet_steps=args.unet_steps)
    if args.lora_steps:
        plan = replace(plan, lora_steps=args.lora_steps)
    if args.lora_ema is not None:
        plan = replace(plan, lora_ema=args.lora_ema)
    if args.schedule_steps:
        plan = replace(plan, schedule_steps=args.schedule_steps)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    timings = build(plan, tuple(s for s in stages if s != "retrieval"))
    if "retrieval" in stages:  # needs the app: embedder, engine and library together
        import time

        from app.starter_retrieval import rebuild_for

        started = time.time()
        rebuild_for(_service(argparse.Namespace(
            base_model=None, base_config=None, library=None, device=None)))
        timings["retrieval"] = round(time.time() - started, 1)
    print(json.dumps({"seconds": timings}))
    return 0


def cmd_library(args: argparse.Namespace) -> int:
    from app.service import ServiceError

    service = _service(args)
    try:
        return LIBRARY_COMMANDS[args.library_command](service, args)
    except ServiceError as exc:
        print(f"loratlas library {args.library_command}: {exc}", file=sys.stderr)
        return 1


def _library_list(service, args) -> int:
    styles = service.library_list(args.search, args.family)
    if args.json:
        print(json.dumps({"styles": [s.to_json() for s in styles]}))
        return 0
    for style in styles:
        mark = "" if style.applicable else f"  (for {style.family}: not applied to this base)"
        print(f"{style.slug:<28} {style.source:<8} {', '.join(style.tags[:4])}{mark}")
    print(f"{len(styles)} styles")
    return 0


def _library_import(service, args) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"loratlas library import: {folder} is not a folder", file=sys.stderr)
        return 2
    files = sorted(folder.glob("*.safetensors"))
    from tqdm import tqdm

    with tqdm(total=len(files), unit="file", disable=args.json, file=sys.stderr) as bar:
        def progress(index: int, step: str, fraction: float) -> None:
            bar.set_postfix_str(f"{files[index].name}: {step}")
            if step == "done":
                bar.update(1)

        reports = service.import_folder(folder, on_progress=progress)
    if args.json:
        print(json.dumps({"files": [r.to_json() for r in reports]}))
    for report in [] if args.json else reports:
        if not report.ok:
            print(f"refused  {report.error['message']}")  # the message names the file
        elif report.duplicate_of:
            print(f"skipped  {report.file}: same file as {report.duplicate_of}")
        else:
            near = f" (near-duplicate of {report.near_duplicate_of})" \
                if report.near_duplicate_of else ""
            print(f"added    {report.file} as {report.slug}{near}")
            if report.note:
                print(f"         {report.note}")
    return 0 if all(r.ok for r in reports) else 1


def _library_show(service, args) -> int:
    print(json.dumps(service.style_card(args.id).to_json(), indent=2))
    return 0


def _library_edit(service, args) -> int:
    tags = [t.strip() for t in args.tags.split(",") if t.strip()] if args.tags is not None \
        else None
    card = service.edit_style(args.id, name=args.name, tags=tags, description=args.description)
    print(json.dumps(card.to_json(), indent=2))
    return 0


def _library_remove(service, args) -> int:
    service.remove_style(args.id)
    print(f"removed {args.id}")
    return 0


LIBRARY_COMMANDS = {"list": _library_list, "import": _library_import, "show": _library_show,
                    "edit": _library_edit, "remove": _library_remove}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    handler = {"inspect": cmd_inspect, "generate": cmd_generate, "serve": cmd_serve,
               "starter": cmd_starter, "retrieve": cmd_retrieve, "library": cmd_library}
    return handler[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
