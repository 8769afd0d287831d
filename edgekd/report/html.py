"""report.html: the Markdown report as one self-contained page (plots inlined as PNG data, a little CSS,
no script, nothing fetched), for a browser, a CI artifact or a device without a Markdown viewer."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from urllib.parse import unquote

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 1.5em auto;
       padding: 0 1em; color: #1d2125; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: #f3f5f7; } img { max-width: 100%; height: auto; }
code { background: #f3f5f7; padding: 0 3px; border-radius: 3px; }
blockquote { border-left: 4px solid #d1242f; margin: .8em 0; padding: .2em 1em; background: #fff5f5; }
#summary { border: 2px solid #2da44e; border-radius: 6px; padding: .2em 1.2em; background: #f6fff8; }
"""


def _inline_images(body: str, base: Path) -> str:
    """Every <img src="x.png"> of a file beside the report becomes a data: URI; a missing one says so."""
    def swap(m: re.Match) -> str:
        alt, src = m.group(1), unquote(m.group(2))
        path = (base / src).resolve()
        if src.startswith(("data:", "http:", "https:")) or path.suffix.lower() != ".png" or not path.is_file():
            return f"<em>[figure {html.escape(alt)} not found: {html.escape(src)}]</em>"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img alt="{alt}" src="data:image/png;base64,{data}"'

    return re.sub(r'<img alt="([^"]*)" src="([^"]+)"', swap, body)


def to_html(markdown_text: str, base: Path, title: str) -> str:
    """The page for `markdown_text`, whose relative image paths are relative to `base`."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "fenced_code"], output_format="html")
    head, found, tail = body.partition("<h2>Summary</h2>")
    if found:  # the summary block: from its heading to where the next section starts
        block, sep, rest = tail.partition("<h2>")
        body = f'{head}<div id="summary"><h2>Summary</h2>{block}</div>{sep}{rest}'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body>\n{_inline_images(body, base)}\n</body></html>\n")
