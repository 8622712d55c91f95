"""The server's Prometheus metrics, and the metric names PromQL expressions refer to.

Two sources of truth for what the server exports:
  - from_source(server/metrics.cc): every family registered with prometheus-cpp's
    Build{Counter,Gauge,Histogram}().Name("...") (names and types, no labels);
  - from_exposition(text): a real scrape of /metrics (names, types and label names).
"""

import re

_BUILD = re.compile(r'Build(Counter|Gauge|Histogram|Summary)\(\)\s*\.Name\(\s*"([A-Za-z_:][A-Za-z0-9_:]*)"\s*\)')
_TYPE = re.compile(r"^# TYPE ([A-Za-z_:][A-Za-z0-9_:]*) (counter|gauge|histogram|summary|untyped)\s*$")
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+\S+")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="(?:[^"\\]|\\.)*"')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")

SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


class Family:
    def __init__(self, name, mtype):
        self.name = name
        self.type = mtype
        self.labels = None  # set of label names; None when unknown (source parsing)

    def series_names(self):
        if self.type in SUFFIXES:
            return [self.name + s for s in SUFFIXES[self.type]]
        return [self.name]


def from_source(text):
    families = {}
    for mtype, name in _BUILD.findall(text):
        families[name] = Family(name, mtype.lower())
    return families


def from_exposition(text):
    families = {}
    for line in text.splitlines():
        m = _TYPE.match(line)
        if m:
            families[m.group(1)] = Family(m.group(1), m.group(2))
            families[m.group(1)].labels = set()
    by_series = series_index(families)
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) not in by_series:
            continue
        fam = by_series[m.group(1)]
        fam.labels.update(n for n in _LABEL.findall(m.group(3) or "") if n != "le" or fam.type != "histogram")
    return families


def series_index(families):
    """Series name (e.g. topserve_batch_size_bucket) -> its Family."""
    return {s: f for f in families.values() for s in f.series_names()}


def strip_strings(expr):
    return _STRING.sub('""', expr)


def referenced_names(expr):
    """Metric and recording-rule names in a PromQL expression: identifiers with 'topserve_' in them,
    plus `up`. Label names and values are not returned (strings are removed, label names never
    contain 'topserve_')."""
    text = strip_strings(expr)
    names = set()
    for m in _IDENT.finditer(text):
        tok = m.group(0)
        rest = text[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function
        if "topserve_" in tok or tok == "up":
            names.add(tok)
    return names


def selector_labels(expr):
    """[(metric name, label name)] for every matcher inside metric{...} selectors."""
    out = []
    for m in _SELECTOR.finditer(expr):
        for lm in _MATCHER.finditer(m.group(2)):
            out.append((m.group(1), lm.group(1)))
    return out


def grouping_labels(expr):
    """Label names used in by/without/on/ignoring/group_* clauses."""
    out = set()
    for m in _GROUPING.finditer(strip_strings(expr)):
        out.update(x.strip() for x in m.group(2).split(",") if x.strip())
    return out
