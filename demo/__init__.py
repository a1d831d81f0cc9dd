"""FinPercep PDM viewer (Gradio): ``python demo/app.py`` or ``finpercep view``.

Modules: ``core`` (scoring, rendering, regions, compare; no Gradio), ``models`` (model choice and
cache), ``exports`` (downloads), ``viewer`` (the functions behind the widgets), ``app`` (the page
and the command line), ``browser`` (headless Chromium driver for the end-to-end test and the
README screenshot).
"""
