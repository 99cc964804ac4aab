"""The Gradio page. Handlers call only the service; no work happens at import time."""

from __future__ import annotations

import json

import gradio as gr

from app.service import GenerateRequest, LoraRequest, LoratlasService, ServiceError


class WebApp:
    """Wires page events to one service object (no module-level state)."""

    def __init__(self, service: LoratlasService) -> None:
        self.service = service

    def generate(self, prompt: str, loras: list[str], weight: float, steps: int, seed: int,
                 num_images: int, progress: gr.Progress = gr.Progress()):  # noqa: B008
        """Generate with the chosen library LoRAs; returns images and the recipe JSON."""
        if not prompt or not prompt.strip():
            raise gr.Error("Type a prompt first.")
        request = GenerateRequest(prompt=prompt, loras=[LoraRequest(ref, weight) for ref in loras],
                                  steps=int(steps), seed=int(seed), num_images=int(num_images))

        def on_step(image: int, step: int, total: int) -> None:
            progress((image * total + step) / (num_images * total), desc="denoising")

        try:
            result = self.service.generate(request, on_step=on_step)
        except ServiceError as exc:
            raise gr.Error(str(exc)) from exc
        return result.images, json.dumps(result.recipe, indent=2)

    def inspect(self, file_path: str | None) -> dict:
        if not file_path:
            raise gr.Error("Choose a .safetensors file to inspect.")
        return self.service.inspect(file_path).to_json()

    def build(self) -> gr.Blocks:
        library = sorted(self.service.library_files())
        base = self.service.base_note
        with gr.Blocks(title="Loratlas") as demo:
            gr.Markdown(f"# Loratlas\nBase model: `{base}` · library: {len(library)} LoRAs")
            with gr.Tab("Create"):
                prompt = gr.Textbox(label="Prompt", placeholder="a red star, old photograph")
                loras = gr.Dropdown(library, multiselect=True, label="Styles (LoRAs)")
                with gr.Row():
                    weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Weight")
                    steps = gr.Slider(1, 50, value=20, step=1, label="Steps")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    count = gr.Slider(1, 4, value=1, step=1, label="Images")
                run = gr.Button("Generate", variant="primary")
                gallery = gr.Gallery(label="Images", columns=4)
                recipe = gr.Code(label="Recipe", language="json")
                run.click(self.generate, [prompt, loras, weight, steps, seed, count],
                          [gallery, recipe], api_name="generate")
            with gr.Tab("Inspect"):
                upload = gr.File(label="LoRA file", file_types=[".safetensors", ".bin", ".pt",
                                                               ".ckpt"], type="filepath")
                report = gr.JSON(label="Report")
                upload.change(self.inspect, upload, report, api_name="inspect")
        return demo


def launch(service: LoratlasService, host: str = "127.0.0.1", port: int = 7860) -> None:
    demo = WebApp(service).build()
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.launch(server_name=host, server_port=port, show_error=True,
                max_file_size=f"{service.config.max_upload_mb}mb")
