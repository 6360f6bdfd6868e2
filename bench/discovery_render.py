"""Team-page discovery and rendering, on the crawler's fixture website (tests/fixture_site.py, served
on 127.0.0.1 by this process):

1. Discovery on the fixture's companies known only by their domain: the staff pages chosen against
   those that should be (tests.fixture_site.DISCOVERED), pages chosen wrongly, pages and requests spent.
2. What rendering a page costs against reading it: one team of four built in the browser from a JSON
   endpoint (/app/team.html) and the same team served as HTML (/app/team-plain.html), each read
   through the crawler's PageLoader (fetch, checks, parse; render where needed), with no politeness
   delay and with the default one (crawl.min_delay_s = 1 s between requests to a host).

    .venv/bin/python -m bench.discovery_render [--repeats 5]

Needs Debian's chromium for part 2 (`make browser`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from urllib.parse import urlsplit

from bench.common import write_result


def _cfg(**overrides):  # noqa: ANN001, ANN202 - a CrawlConfig
    from pipeline.config import CrawlConfig

    return CrawlConfig.model_validate({"allow_private": ["127.0.0.1"], "min_delay_s": 0, **overrides})


def discovery(site) -> dict:  # noqa: ANN001 - a tests.fixture_site.Site
    from pipeline.ingest.crawl.discover import discover
    from pipeline.ingest.crawl.http import Fetcher
    from pipeline.ingest.crawl.pages import PageLoader
    from pipeline.ingest.crawl.robots import RobotsBook
    from pipeline.ingest.crawl.sites import SiteEntry
    from tests.fixture_site import DISCOVERED

    figures: dict = {}
    for name, expected in DISCOVERED.items():
        cfg = _cfg()
        before = len(site.requests)
        started = time.perf_counter()
        with Fetcher(cfg) as fetcher, PageLoader(cfg, fetcher) as loader:
            robots = RobotsBook(fetcher)
            fetcher.robots_check = robots.check
            found = discover(SiteEntry(name=name, domain=site.domain_bases[name]), cfg, loader, robots)
        seconds = time.perf_counter() - started
        chosen = sorted(urlsplit(url).path for url in found.chosen)
        requests = [r.path for r in site.requests[before:] if r.server == name]
        figures[name] = {
            "should_be_found": expected, "chosen": chosen, "found": len(set(chosen) & set(expected)),
            "chosen_wrongly": sorted(set(chosen) - set(expected)), "requests": len(requests), "seconds": round(seconds, 3),
        }  # fmt: skip
        print(f"{name:12s} found {figures[name]['found']}/{len(expected)}, chosen wrongly {figures[name]['chosen_wrongly']}, "
              f"{len(requests)} requests, {seconds:.2f} s")  # fmt: skip
    figures["total"] = {
        "found": sum(f["found"] for f in figures.values()),
        "should_be_found": sum(len(expected) for expected in DISCOVERED.values()),
        "chosen_wrongly": sum(len(f["chosen_wrongly"]) for f in figures.values()),
    }
    return figures


def _browser_pss_mb(browser) -> float:  # noqa: ANN001 - a psutil.Process
    import psutil

    total = 0
    for process in [browser, *browser.children(recursive=True)]:
        try:
            total += process.memory_full_info().pss
        except psutil.NoSuchProcess:  # a helper process that ended meanwhile
            continue
    return total / 2**20


def render_cost(site, repeats: int, min_delay_s: float) -> dict:  # noqa: ANN001
    import psutil

    from pipeline.ingest.crawl.http import Fetcher
    from pipeline.ingest.crawl.pages import PageLoader
    from pipeline.ingest.crawl.robots import RobotsBook

    cfg = _cfg(min_delay_s=min_delay_s)
    rss: list[float] = []  # MB (proportional set size: shared pages counted once) of the browser's processes after a page
    times: dict[str, list[float]] = {"plain": [], "rendered_cold": [], "rendered_warm": []}
    for _ in range(repeats):
        for kind, path in (("plain", "/app/team-plain.html"), ("rendered_cold", "/app/team.html")):
            with Fetcher(cfg) as fetcher, PageLoader(cfg, fetcher) as loader:
                fetcher.robots_check = RobotsBook(fetcher).check
                fetcher.robots_check(site.base + "/")  # robots.txt read before the clock: both pay it alike
                started = time.perf_counter()
                page = loader.load(site.base + path)
                times[kind].append(time.perf_counter() - started)
                assert len([c for c in page.parsed.candidates if not c.in_chrome]) == 4, (path, page.summary)
                if kind == "rendered_cold":  # the same page again in the browser already running
                    renderer = loader._renderer  # noqa: SLF001
                    response = fetcher.get(site.base + path)
                    started = time.perf_counter()
                    renderer.render(response.url, response.body, response.content_type)
                    times["rendered_warm"].append(time.perf_counter() - started + times["plain"][-1])
                    rss.append(_browser_pss_mb(psutil.Process(renderer._browser_pid)))  # noqa: SLF001
    median = {kind: statistics.median(values) for kind, values in times.items()}
    figures = {f"{kind}_s": round(value, 4) for kind, value in median.items()}
    figures["rendered_cold_over_plain"] = round(median["rendered_cold"] / median["plain"], 1)
    figures["rendered_warm_over_plain"] = round(median["rendered_warm"] / median["plain"], 1)
    figures["browser_rss_mb"] = round(max(rss))
    print(f"min_delay_s={min_delay_s:g}: plain {1000 * median['plain']:.0f} ms, rendered {median['rendered_cold']:.2f} s with the browser's "
          f"start ({figures['rendered_cold_over_plain']}x), {median['rendered_warm']:.2f} s in a running browser "
          f"({figures['rendered_warm_over_plain']}x); the browser's processes {figures['browser_rss_mb']} MB")  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from pipeline.ingest.crawl.render import RenderUnavailable, chromium_executable
    from tests.fixture_site import served

    with served() as site:
        figures = {"discovery": discovery(site)}
        try:
            chromium_executable(_cfg())
        except RenderUnavailable as exc:
            print(f"rendering not measured: {exc}")
        else:
            figures["render"] = {f"min_delay_s={delay:g}": render_cost(site, args.repeats, delay) for delay in (0.0, 1.0)}
    write_result("discovery_render", figures)


if __name__ == "__main__":
    main()
