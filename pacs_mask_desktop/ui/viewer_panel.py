"""The viewer with its bar: slice slider (with finding ticks and a Dice band), window preset, overlay
toggle and opacity slider."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from pacs_mask_desktop.core.dicom_series import WINDOW_PRESETS, Series, Window
from pacs_mask_desktop.ui.formatting import slice_text
from pacs_mask_desktop.ui.overlay_sources import OverlaySource
from pacs_mask_desktop.ui.slice_marks import SliceMarks
from pacs_mask_desktop.ui.viewer import SliceView
from pacs_mask_desktop.ui.workers import TaskRunner

PRESET_TITLES = {
    "default": "File default",
    "soft_tissue": "Soft tissue (W400 L40)",
    "lung": "Lung (W1500 L-600)",
    "bone": "Bone (W1800 L400)",
    "brain": "Brain (W80 L40)",
}


class ViewerPanel(QWidget):
    """A :class:`SliceView` above a bar of the controls users reach for while reading."""

    presetChosen = Signal(str)
    overlayChanged = Signal(object)  # the OverlaySource now drawn, or None

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.view = SliceView(runner, self)

        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setObjectName("sliceSlider")
        self.slider.setEnabled(False)
        self.slider.setToolTip("Slice (wheel, ↑/↓, PgUp/PgDn, Home/End)")
        self.slice_label = QLabel("–")
        self.slice_label.setObjectName("sliceLabel")
        self.slice_label.setMinimumWidth(150)

        self.preset = QComboBox()
        self.preset.setToolTip("Window/level preset (keys 1-4, right-drag to adjust)")
        self.preset.addItem("Custom", None)
        for key, title in PRESET_TITLES.items():
            if key != "default":
                self.preset.addItem(title, key)

        self.overlay_box = QCheckBox("Overlay (O)")
        self.overlay_box.setChecked(True)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setObjectName("opacitySlider")
        self.opacity.setRange(0, 100)
        self.opacity.setValue(int(self.view.opacity * 100))
        self.opacity.setFixedWidth(140)
        self.opacity.setToolTip("Overlay opacity")
        self.opacity_label = QLabel(f"{self.opacity.value()}%")
        self.opacity_label.setMinimumWidth(40)

        self.progress = QProgressBar()
        self.progress.setObjectName("seriesProgress")
        self.progress.setFixedWidth(220)
        self.progress.setFormat("PACS %v/%m")
        self.progress.setToolTip("Instances of the series retrieved from the PACS")
        self.progress.hide()

        # Review findings as ticks above the slider, a compare's per-slice Dice as a band below it.
        self.finding_marks = SliceMarks(self.slider, style="ticks")
        self.dice_strip = SliceMarks(self.slider, style="band", below=True)
        self.finding_marks.sliceClicked.connect(self.view.set_index)
        self.dice_strip.sliceClicked.connect(self.view.set_index)
        slider_column = QVBoxLayout()
        slider_column.setSpacing(1)
        slider_column.addWidget(self.finding_marks)
        slider_column.addWidget(self.slider)
        slider_column.addWidget(self.dice_strip)
        slider_row = QHBoxLayout()
        slider_row.setSpacing(10)
        slider_row.addWidget(self.slice_label)
        slider_row.addLayout(slider_column, 1)
        slider_row.addWidget(self.progress)
        controls = QHBoxLayout()
        controls.setSpacing(10)
        controls.addWidget(QLabel("Window"))
        controls.addWidget(self.preset)
        controls.addStretch(1)
        controls.addWidget(self.overlay_box)
        controls.addWidget(QLabel("Opacity"))
        controls.addWidget(self.opacity)
        controls.addWidget(self.opacity_label)
        bar = QVBoxLayout()
        bar.setContentsMargins(8, 4, 8, 6)
        bar.setSpacing(4)
        bar.addLayout(slider_row)
        bar.addLayout(controls)
        bar_widget = QWidget()
        bar_widget.setObjectName("viewerBar")
        bar_widget.setLayout(bar)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.view, 1)
        layout.addWidget(bar_widget)

        self.slider.valueChanged.connect(self.view.set_index)
        self.view.indexChanged.connect(self._on_index)
        self.view.windowChanged.connect(self._on_window)
        self.preset.activated.connect(self._on_preset_chosen)
        self.overlay_box.toggled.connect(self.view.set_overlay_visible)
        self.opacity.valueChanged.connect(self._on_opacity)

    # --- API used by the main window ----------------------------------------------------------------

    def set_series(self, series: Series | None) -> None:
        """Show a series (resets slider range, window and overlay)."""
        self.slider.blockSignals(True)
        self.slider.setEnabled(series is not None and len(series) > 1)
        self.slider.setRange(0, max(0, len(series) - 1) if series is not None else 0)
        self.slider.blockSignals(False)
        self.view.set_series(series)
        self.overlayChanged.emit(None)  # a new series starts without an overlay
        if series is None:
            self.slice_label.setText("–")

    def update_series(self, series: Series) -> None:
        """More slices of the open series arrived (see :meth:`SliceView.update_series`)."""
        self.slider.blockSignals(True)
        self.slider.setEnabled(len(series) > 1)
        self.slider.setRange(0, max(0, len(series) - 1))
        self.slider.blockSignals(False)
        self.view.update_series(series)

    def set_progress(self, done: int, total: int, *, running: bool = True) -> None:
        """Retrieval progress of a series streaming in from the PACS (``total`` 0: unknown)."""
        self.progress.setRange(0, total)  # (0, 0): Qt's busy indicator
        self.progress.setValue(done)
        self.progress.setVisible(running)

    def set_overlay(self, overlay: OverlaySource | None) -> None:
        """Draw ``overlay`` on the series."""
        self.view.set_overlay(overlay)
        self.overlayChanged.emit(overlay)

    def apply_preset(self, key: str) -> None:
        """Apply a named window preset (``soft_tissue``, ``lung``, ``bone``, ``brain``, ``default``)."""
        series = self.view.series
        presets: dict[str, Window] = series.window_presets() if series is not None else dict(WINDOW_PRESETS)
        window = presets.get(key)
        if window is None:
            return
        self.view.set_window(window.center, window.width)

    def toggle_overlay(self) -> None:
        """Flip overlay visibility (the O key)."""
        self.overlay_box.toggle()

    # --- slots --------------------------------------------------------------------------------------

    def _on_index(self, index: int) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(index)
        self.slider.blockSignals(False)
        series = self.view.series
        if series is None:
            return
        ref = series[index]
        where = f" · {ref.position:.1f} mm" if ref.position is not None else ""
        self.slice_label.setText(f"{slice_text(index, len(series))}{where}")

    def _on_window(self, center: float, width: float) -> None:
        match = next(
            (
                i
                for i in range(1, self.preset.count())
                if (w := WINDOW_PRESETS.get(self.preset.itemData(i))) is not None
                and abs(w.center - center) < 0.5
                and abs(w.width - width) < 0.5
            ),
            0,
        )
        self.preset.setCurrentIndex(match)

    def _on_preset_chosen(self, row: int) -> None:
        key = self.preset.itemData(row)
        if key:
            self.apply_preset(key)
            self.presetChosen.emit(key)

    def _on_opacity(self, value: int) -> None:
        self.opacity_label.setText(f"{value}%")
        self.view.set_opacity(value / 100.0)
