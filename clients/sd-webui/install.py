"""Run by the WebUI when it loads the extension: the client needs httpx (gradio brings it; older setups may not)."""

import launch

if not launch.is_installed("httpx"):
    launch.run_pip("install httpx>=0.24", "httpx for the TIPO service extension")
