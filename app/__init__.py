"""The Loratlas application: the service facade, the CLI and the Gradio UI."""
