// Accessible names for the saved ipywidgets that the static book renders (chapter 5's explorer).
//
// The html-manager bundle (@jupyter-widgets/html-manager 1.0.15) draws a slider as a noUiSlider
// handle, a <div role="slider">, and its description as a <label> that is tied to nothing, so a
// screen reader announces "slider, 22" with no name (axe: aria-input-field-name). Here each
// handle is named by its own widget's description (aria-labelledby). A figure that an Output
// widget shows is an <img> without alt (axe: image-alt); it gets one built from the controls of
// the same widget ("Figure drawn by the widget for image 0, stage conv2, channel 22").
// A widget without a description keeps no name: the fix for that is a description in Python.
(function () {
  "use strict";
  const VIEW = 'script[type="application/vnd.jupyter.widget-view+json"]';
  let serial = 0;

  function labelId(label) {
    if (!label.id) {
      serial += 1;
      label.id = `widget-description-${serial}`;
    }
    return label.id;
  }

  function description(control) {
    const label = control.querySelector(":scope > .widget-label");
    return label && label.textContent.trim() && getComputedStyle(label).display !== "none"
      ? label
      : null;
  }

  function nameSliders(root) {
    root.querySelectorAll(".widget-slider").forEach((control) => {
      const label = description(control);
      if (!label) return;
      control.querySelectorAll('[role="slider"]').forEach((handle) => {
        if (!handle.hasAttribute("aria-labelledby") && !handle.hasAttribute("aria-label")) {
          handle.setAttribute("aria-labelledby", labelId(label));
        }
      });
    });
  }

  function controlValue(control) {
    const select = control.querySelector("select");
    if (select) return select.selectedOptions.length ? select.selectedOptions[0].text : "";
    const readout = control.querySelector(".widget-readout");
    if (readout) return readout.textContent.trim();
    const input = control.querySelector("input");
    return input ? input.value : "";
  }

  function describeOutputs(root) {
    const images = root.querySelectorAll(".widget-output img:not([alt])");
    if (!images.length) return;
    const settings = Array.from(root.querySelectorAll(".widget-inline-hbox"))
      .map((control) => {
        const label = description(control);
        const value = controlValue(control);
        return label && value ? `${label.textContent.trim()} ${value}` : "";
      })
      .filter(Boolean);
    const alt = settings.length
      ? `Figure drawn by the widget for ${settings.join(", ")}`
      : "Figure drawn by the widget";
    images.forEach((img) => img.setAttribute("alt", alt));
  }

  function fix() {
    document.querySelectorAll(".cell_output").forEach((cell) => {
      if (!cell.querySelector(".jupyter-widgets")) return;
      nameSliders(cell);
      describeOutputs(cell);
    });
  }

  function start() {
    if (!document.querySelector(VIEW)) return; // no saved widget on this page
    fix();
    let pending = false;
    new MutationObserver(() => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        fix();
      });
    }).observe(document.body, { childList: true, subtree: true });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
