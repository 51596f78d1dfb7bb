"""How the page looks and the little it does in the browser itself: the theme (NVIDIA green, text
colours that pass WCAG AA in light and dark), the CSS that keeps the chat, the message box and
its buttons on the first screen, and the script that names the message box for screen readers,
holds back an upload of more files than a chat holds (the server refuses such an upload whole), and
puts a number typed out of a setting's range back to the last one in range (never the bound).
"""

from __future__ import annotations

import json

import gradio as gr


def theme() -> gr.themes.Base:
    """NVIDIA green on a soft theme, with system fonts only (no font downloads: works offline).
    Labels and links get darker (light) or lighter (dark) shades than the theme's, for contrast."""
    sans = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Soft(primary_hue="lime", secondary_hue="emerald", neutral_hue="slate",
                          font=sans, font_mono=mono).set(
        block_label_text_color="*primary_800", block_label_text_color_dark="*primary_100",
        block_label_background_fill="*primary_100", block_label_background_fill_dark="*primary_800",
        block_title_text_color="*primary_800", block_title_text_color_dark="*primary_100",
        block_title_background_fill="*primary_100", block_title_background_fill_dark="*primary_800",
        block_info_text_color="*neutral_600", block_info_text_color_dark="*neutral_300",
        body_text_color_subdued="*neutral_600", body_text_color_subdued_dark="*neutral_300",
        color_accent="*primary_700", color_accent_soft="*primary_50",
        link_text_color="*secondary_700", link_text_color_visited="*secondary_700",
        link_text_color_hover="*secondary_800", link_text_color_active="*secondary_800",
        button_primary_background_fill="*primary_700", button_primary_background_fill_hover="*primary_800",
        button_primary_background_fill_dark="*primary_700", button_primary_background_fill_hover_dark="*primary_800",
        button_primary_text_color="white", button_primary_text_color_dark="white",
        button_primary_border_color="*primary_700", button_primary_border_color_dark="*primary_700",
    )


CSS = """
/* one compact column of header, chat, message box and buttons on the first screen */
.gradio-container > .main {padding: 8px 24px !important;}
#chat-column {gap: 8px !important;}
#top {align-items: center; gap: 8px; flex-wrap: nowrap; min-height: 40px;}
#top > * {flex: 0 1 auto !important; min-width: 0 !important; width: auto !important;}
#title h1 {font-size: 1.15rem; margin: 0; white-space: nowrap;}
#model {flex: 0 0 170px !important; padding: 0 !important;}
#status {flex: 1 1 200px !important; font-size: var(--text-sm); line-height: 1.3;
         display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden;}
#status p {margin: 0;}
#chat {height: calc(100dvh - 310px) !important; min-height: 240px;}
#chat .message img {max-height: 240px; width: auto; min-width: 32px; min-height: 32px; object-fit: contain;
                    background: var(--background-fill-secondary);}
/* a question's images as a compact row of thumbnails (a click enlarges one), its text below */
#chat .user-row .message.user {display: flex; flex-wrap: wrap; justify-content: flex-end; gap: 6px;}
#chat .user-row .message.user > .message.component {width: auto; max-width: 168px; flex: 0 1 auto; min-width: 0;}
#chat .user-row .message.user > .message.component img {max-height: 120px; width: auto; max-width: 100%;}
#chat .user-row .message.user > .message:not(.component) {flex-basis: 100%;}
/* the empty chat: its intro and every example card in view, each card two lines at most */
#chat .placeholder-content {padding: 4px 12px;}
#chat .placeholder {flex-grow: 0; justify-content: flex-start; align-items: flex-start;}
#chat .placeholder p {margin: 0;}
#chat .examples {grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 8px; margin-top: 8px;}
#chat .example {padding: 8px 10px; min-height: 0;}
#chat .example-content {flex-direction: row; align-items: center; gap: 8px;}
#chat .example-image-container {flex: 0 0 auto;}
#chat .example-image {width: 32px; height: 32px;}
#chat .example-text {display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden;
                     font-size: var(--text-sm);}
/* no Like or Dislike on what is not an answer: an error, a stopped-before-it-began note, the progress */
#chat .bot-row:has(.thought-group) + .message-buttons button:is([aria-label=Like], [aria-label=Dislike]) {
  display: none;}
#uploads {gap: 8px;}
#uploads > div {min-width: 0;}
/* upload labels on one line above their boxes, never over the thumbnails */
#uploads [data-testid=block-label] {white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
                                    max-width: calc(100% - 8px);}
#gallery .grid-wrap {padding-top: 36px;}
#gallery .caption-label {max-width: 100%;}
#actions {gap: 6px; align-items: center; flex-wrap: wrap;}
#actions > button {flex: 0 0 auto !important;}
#wait {flex: 1 1 200px !important; font-size: var(--text-sm);}
#wait p {margin: 0;}
#frames .caption-label {max-width: 100%; white-space: nowrap;}
/* a focus ring on every control the keyboard reaches (gradio draws none on some) */
:is(button, input, textarea, select, [role=button], [role=slider], [role=option], [tabindex]):focus-visible {
  outline: 2px solid var(--color-accent) !important; outline-offset: 2px;}
@media (max-width: 640px) {
  .gradio-container > .main {padding: 6px 8px !important;}
  #top {flex-wrap: wrap; row-gap: 2px;}
  #title {flex: 1 0 100% !important;}
  #title h1 {font-size: 0.95rem; white-space: normal;}
  /* the upload labels whole in half a phone's width: a smaller font, no icon */
  #uploads [data-testid=block-label] {font-size: 0.7rem; font-weight: 500; letter-spacing: -0.01em;
                                      padding-left: 4px; padding-right: 4px; max-width: 100%;}
  #uploads [data-testid=block-label] > span:has(svg) {display: none;}
  #chat {height: calc(100dvh - 370px) !important; min-height: 220px;}
  #chat .examples {grid-template-columns: 1fr 1fr;}
  #chat .example-image {width: 24px; height: 24px;}
  #chat .user-row .message.user > .message.component {max-width: calc(25% - 6px);}
  #chat .user-row .message.user > .message.component img {max-height: 72px;}
}
"""


def head(mcp: bool, max_files: int) -> str:
    """The page's own script (see the module's docstring). `mcp`: the API page may ask for the MCP
    schema; without MCP that route does not exist, and asking for it would only log a 404."""
    return "<script>\n" + _SCRIPT.replace("__SETTINGS__", json.dumps({"mcp": mcp, "maxFiles": max_files})) + \
        "\n</script>"


_SCRIPT = r"""
(() => {
  const settings = __SETTINGS__;
  // screen-reader names gradio leaves out (it would read the component's type)
  const names = () => {
    const box = document.querySelector('#ask textarea');
    if (box && box.getAttribute('aria-label') !== 'Message') box.setAttribute('aria-label', 'Message');
    const send = document.querySelector('#ask .submit-button');
    if (send && send.getAttribute('aria-label') !== 'Send') send.setAttribute('aria-label', 'Send');
  };
  new MutationObserver(names).observe(document.documentElement, {subtree: true, childList: true});
  // an upload of more files than a chat holds: the first ones go, the rest are named in a toast
  const heldBack = names => {
    const field = document.querySelector('#refused-files textarea');
    if (!field) return;
    field.value = names.join('\n');
    field.dispatchEvent(new Event('input', {bubbles: true}));  // gradio's change event follows
  };
  const trimmed = files => {
    const kept = new DataTransfer();
    [...files].slice(0, settings.maxFiles).forEach(f => kept.items.add(f));
    heldBack([...files].slice(settings.maxFiles).map(f => f.name));
    return kept;
  };
  const inUploads = node => node && node.closest && node.closest('#uploads, #ask');
  document.addEventListener('change', event => {
    const input = event.target;
    if (input instanceof HTMLInputElement && input.type === 'file' && inUploads(input)
        && input.files && input.files.length > settings.maxFiles) input.files = trimmed(input.files).files;
  }, true);
  document.addEventListener('drop', event => {
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!inUploads(event.target) || !files || files.length <= settings.maxFiles || event.__trimmed) return;
    event.stopImmediatePropagation();
    event.preventDefault();
    const again = new DragEvent('drop', {dataTransfer: trimmed(files), bubbles: true, cancelable: true});
    again.__trimmed = true;
    event.target.dispatchEvent(again);
  }, true);
  // An edited question: gradio's Chatbot sends an edit only for a bubble of text alone, and a
  // question here holds its images too. Its check mark hands the edit to the server instead (the
  // question's place among the chat's questions, and its new words), and the edit box closes.
  document.addEventListener('click', event => {
    const submit = event.target.closest && event.target.closest('#chat button[aria-label=Submit]');
    const area = submit && document.querySelector('#chat .user-row textarea');
    const field = document.querySelector('#edited textarea');
    if (!area || !field) return;
    event.stopImmediatePropagation();
    event.preventDefault();
    const question = [...document.querySelectorAll('#chat .user-row')].indexOf(area.closest('.user-row'));
    field.value = JSON.stringify({question, text: area.value, at: Date.now()});
    field.dispatchEvent(new Event('input', {bubbles: true}));
    document.querySelector('#chat button[aria-label=Cancel]')?.click();
  }, true);
  // A number typed outside a setting's range is told at once (the setting's own check). On leaving
  // the field it goes back to the last value in range: gradio's slider would clamp it to the bound,
  // and 99999999 new tokens would quietly become a 4,096-token answer. (Capture phase: before the
  // slider's own blur handler.)
  const inRange = input => input.value.trim() !== '' && Number.isFinite(Number(input.value))
    && (input.min === '' || Number(input.value) >= Number(input.min))
    && (input.max === '' || Number(input.value) <= Number(input.max));
  const isNumber = node => node instanceof HTMLInputElement && node.type === 'number';
  const keep = event => {
    if (isNumber(event.target) && inRange(event.target)) event.target.dataset.inRange = event.target.value;
  };
  document.addEventListener('focus', keep, true);
  document.addEventListener('input', keep, true);
  document.addEventListener('blur', event => {
    const input = event.target;
    if (!isNumber(input) || inRange(input) || input.dataset.inRange === undefined) return;
    input.value = input.dataset.inRange;
    input.dispatchEvent(new Event('input', {bubbles: true}));
  }, true);
  // gradio's client closes its event stream through a stub that logs this notice each time
  const warn = console.warn.bind(console);
  console.warn = (...args) => { if (args[0] !== 'Method not implemented.') warn(...args); };
  if (!settings.mcp) {  // gradio's API page shows an MCP tab, and probes this route for it, MCP on or off
    const hidden = document.createElement('style');
    hidden.textContent = '.snippets li.snippet:has(img[src*="/mcp-"]) {display: none !important;}';
    document.head.appendChild(hidden);
    const fetched = window.fetch.bind(window);
    window.fetch = (resource, options) => {
      const url = typeof resource === 'string' ? resource : (resource && resource.url) || '';
      if (url.endsWith('/gradio_api/mcp/schema')) return Promise.resolve(new Response('[]', {status: 404}));
      return fetched(resource, options);
    };
  }
})();
"""
