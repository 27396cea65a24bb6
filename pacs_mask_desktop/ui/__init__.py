"""The desktop app's Qt layer: windows, widgets, item models and the workers that bridge core to signals."""
