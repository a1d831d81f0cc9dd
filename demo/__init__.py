"""FinPercep PDM viewer (Gradio): ``finpercep view`` or ``python -m demo.app``.

Modules: ``core`` (scoring, rendering, regions, compare; no Gradio), ``models`` (model choice and
cache), ``exports`` (downloads), ``viewer`` (the functions behind the widgets), ``cli`` (the command
line, no Gradio: ``finpercep view`` finds it through the ``finpercep.commands`` entry point),
``app`` (the page). The headless-browser driver of the tests is ``tests/viewer_browser.py``.
Dependency direction: demo -> diffusers_ext, never back.
"""
