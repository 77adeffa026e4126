"""`demonlab demo`: a local web page (Gradio) to talk to a VPG-C model over several images with VPG-C on and off side by
side, see where its VPG looked in each image, and browse evaluation bundles sample by sample.

    chat.py      the Chat tab's engine: checked uploads and instructions, one model answering with VPG-C on and off
    maps.py      the VPG's cross-attention of the first pass and of the VPG-C re-extraction, as image overlays
    results.py   evaluation bundles: samples joined with their instructions and images, filters, MLflow links
    app.py       the Gradio Blocks that wire them into a page, and `serve`

Everything but app.py is plain Python (no Gradio), so it is tested without a browser; app.py is tested in one.
"""
