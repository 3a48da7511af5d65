"""What the library writes for people, shared by several floors: model cards (``model_card``: written
by training and the demo, read by the web server) and figures (``viz``: training curves, MAE
reconstructions, accuracy by question type, heat-map overlays). Matplotlib is imported inside the
drawing functions only."""
