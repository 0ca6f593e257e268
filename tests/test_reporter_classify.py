"""Classification rules, one by one, on events in DuckDB; and the [report.classification] keys."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest
from clicktrail.agent.config import ClassificationConfig, ConfigError, UserAgentRule, load_config
from clicktrail.reporter.catalog import CatalogLink, DeliveryCatalog
from clicktrail.reporter.classify import classify_events, flagged_per_rule
from clicktrail.reporter.engagement import Engagement

SENT = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
BROWSER = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/131.0.0.0 Safari/537.36")
COLUMNS = ("event_id", "event_time", "event_type", "delivery_id", "recipient_id", "link_id",
           "http_method", "user_agent", "client_network", "request_anomaly")


def event(event_id: str, event_type: str = "open", *, after_s: float = 3600,
          recipient: str = "r1", link: str | None = None, method: str = "GET",
          agent: str | None = BROWSER, network: str | None = None,
          anomaly: str | None = None) -> dict:
    return {"event_id": event_id, "event_time": SENT + timedelta(seconds=after_s),
            "event_type": event_type, "delivery_id": "d1", "recipient_id": recipient,
            "link_id": link, "http_method": method, "user_agent": agent,
            "client_network": network, "request_anomaly": anomaly}


DEFAULT_RULES = ClassificationConfig()


def classify(events: list[dict], rules: ClassificationConfig = DEFAULT_RULES,
             links: dict[str, str] | None = None, sent_at: datetime | None = SENT,
             ) -> dict[str, tuple[str, list[str]]]:
    con = duckdb.connect()
    table = pa.table({name: [e[name] for e in events] for name in COLUMNS}, schema=pa.schema(
        [(name, pa.timestamp("us", tz="UTC") if name == "event_time" else pa.string())
         for name in COLUMNS]))
    con.register("events", table)
    links = links or {}
    con.register("link_types", pa.table({
        "delivery_id": pa.array(["d1"] * len(links), pa.string()),
        "link_id": pa.array(list(links), pa.string()),
        "type": pa.array(list(links.values()), pa.string()),
    }))
    catalog = DeliveryCatalog("d1", found=True, sent_at=sent_at,
                              links={k: CatalogLink(k, None, None, v) for k, v in links.items()})
    classify_events(con, rules, {"d1": catalog})
    rows = con.execute("SELECT event_id, class, reasons FROM event_classes").fetchall()
    con.close()
    return {event_id: (class_, reasons) for event_id, class_, reasons in rows}


def test_late_browser_hits_are_human():
    result = classify([event("o1"), event("c1", "click", link="l1")])

    assert result == {"o1": ("human", []), "c1": ("human", [])}


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
         ("proxy_open", ["user_agent:gmail_image_proxy"])),
        ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
         ("proxy_open", ["user_agent:yahoo_mail_proxy"])),
        ("Mozilla/5.0", ("machine_prefetch", ["user_agent:bare_mozilla"])),
        ("python-requests/2.31.0", ("machine_prefetch", ["user_agent:http_library"])),
        (None, ("unknown", ["no_user_agent"])),
        ("", ("unknown", ["no_user_agent"])),
        ("-", ("unknown", ["no_user_agent"])),
    ],
)
def test_open_user_agents(agent, expected):
    assert classify([event("o1", agent=agent)])["o1"] == expected


@pytest.mark.parametrize(
    ("agent", "reason"),
    [
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
         "HeadlessChrome/121.0.6167.85 Safari/537.36", "user_agent:headless_browser"),
        ("Go-http-client/1.1", "user_agent:http_library"),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel (EE))", "user_agent:security_gateway"),
        ("Mimecast-URL-Protect/1.0", "user_agent:security_gateway"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
         "user_agent:crawler"),
    ],
)
def test_scanner_user_agents_click(agent, reason):
    assert classify([event("c1", "click", link="l1", agent=agent)])["c1"] == (
        "scanner_click", [reason])


def test_networks_decide_by_event_type():
    result = classify([
        event("o-apple", network="apple_mpp"),
        # Apple's egress ranges also carry iCloud Private Relay users clicking in Safari.
        event("c-apple", "click", link="l1", network="apple_mpp"),
        event("o-gmail", network="gmail_image_proxy"),
        event("o-scan", network="scanners"),
        event("c-scan", "click", link="l1", network="scanners", recipient="r2"),
        event("o-other", network="office"),
    ])

    assert result == {
        "o-apple": ("machine_prefetch", ["network:apple_mpp"]),
        "c-apple": ("human", []),
        "o-gmail": ("proxy_open", ["network:gmail_image_proxy"]),
        "o-scan": ("machine_prefetch", ["network:scanners"]),
        "c-scan": ("scanner_click", ["network:scanners"]),
        "o-other": ("human", []),
    }


def test_head_click_hidden_link_and_request_anomaly():
    result = classify([
        event("c-head", "click", link="l1", method="HEAD"),
        event("o-head", method="HEAD", recipient="r2"),
        event("c-trap", "click", link="trap", recipient="r3"),
        event("o-09", anomaly="no_protocol", recipient="r4"),
        event("c-abs", "click", link="l1", anomaly="absolute_form", recipient="r5"),
    ], links={"l1": "click", "trap": "hidden"})

    assert result == {
        "c-head": ("scanner_click", ["head_request"]),
        # Mail clients check the pixel with HEAD too: a HEAD open is no evidence.
        "o-head": ("human", []),
        "c-trap": ("scanner_click", ["hidden_link"]),
        "o-09": ("machine_prefetch", ["request:no_protocol"]),
        "c-abs": ("scanner_click", ["request:absolute_form"]),
    }


def test_head_clicks_can_be_turned_off():
    rules = ClassificationConfig(head_clicks=False)

    assert classify([event("c1", "click", link="l1", method="HEAD")], rules)["c1"] == ("human", [])


def test_fast_click_uses_sent_event():
    mta_sent = SENT + timedelta(minutes=30)
    events = [
        {**event("s1", "sent"), "event_time": mta_sent},
        # 5 s after the recipient's sent event, but 30 min after the catalog's sent_at.
        {**event("c1", "click", link="l1"), "event_time": mta_sent + timedelta(seconds=5)},
        # r2 has no sent event: the catalog's sent_at applies.
        event("c2", "click", link="l1", recipient="r2", after_s=9.9),
        event("c3", "click", link="l1", recipient="r3", after_s=10),
        # Before the delivery time: a clock difference, not evidence.
        event("c4", "click", link="l1", recipient="r4", after_s=-3),
    ]

    result = classify(events)

    assert result["c1"] == ("scanner_click", ["click_soon_after_delivery"])
    assert result["c2"] == ("scanner_click", ["click_soon_after_delivery"])
    assert result["c3"] == ("human", [])
    assert result["c4"] == ("human", [])
    assert "s1" not in result


def test_click_burst_needs_distinct_links():
    events = [
        # r1: three links within 1.5 s, then the same link again much later.
        event("a1", "click", link="l1", after_s=600.0),
        event("a2", "click", link="l2", after_s=600.7),
        event("a3", "click", link="l3", after_s=601.5),
        event("a4", "click", link="l1", after_s=900.0),
        # r2: three clicks within 2 s but on two links only.
        event("b1", "click", link="l1", recipient="r2", after_s=600.0),
        event("b2", "click", link="l1", recipient="r2", after_s=600.5),
        event("b3", "click", link="l2", recipient="r2", after_s=601.0),
        # r3: three links, 2.5 s apart each.
        event("c1", "click", link="l1", recipient="r3", after_s=600.0),
        event("c2", "click", link="l2", recipient="r3", after_s=602.5),
        event("c3", "click", link="l3", recipient="r3", after_s=605.0),
    ]

    result = classify(events)

    burst = {key for key, (class_, _) in result.items() if class_ == "scanner_click"}
    assert burst == {"a1", "a2", "a3"}
    assert result["a1"] == ("scanner_click", ["click_burst"])


def test_timing_rules_turned_off():
    rules = ClassificationConfig(click_window_s=0, burst_links=0)
    events = [event(f"c{i}", "click", link=f"l{i}", after_s=1 + i * 0.1) for i in range(4)]

    assert {class_ for class_, _ in classify(events, rules).values()} == {"human"}


def test_prefetch_window_off_by_default():
    events = [event("o1", after_s=20),
              event("o2", after_s=20, recipient="r2", network="gmail_image_proxy")]
    rules = ClassificationConfig(prefetch_window_s=60)

    assert classify(events)["o1"] == ("human", [])
    assert classify(events, rules) == {
        "o1": ("machine_prefetch", ["open_soon_after_delivery"]),
        "o2": ("proxy_open", ["network:gmail_image_proxy", "open_soon_after_delivery"]),
    }


def test_every_matching_rule_is_a_reason_and_counted():
    events = [event("c1", "click", link="l1", method="HEAD", agent="python-requests/2.31",
                    network="scanners", after_s=2)]

    result = classify(events)

    assert result["c1"] == ("scanner_click", ["network:scanners", "user_agent:http_library",
                                              "head_request", "click_soon_after_delivery"])


def test_flagged_per_rule_counts_hits():
    con = duckdb.connect()
    con.execute("""CREATE TEMP TABLE event_classes AS
        SELECT * FROM (VALUES ('e1', 'd1', 'open', 'proxy_open', ['network:g']),
                              ('e2', 'd1', 'open', 'proxy_open', ['network:g', 'user_agent:x']),
                              ('e3', 'd1', 'click', 'human', []::VARCHAR[]))
        AS t(event_id, delivery_id, event_type, class, reasons)""")

    assert flagged_per_rule(con) == {"d1": [("network:g", 2), ("user_agent:x", 1)]}


def test_extra_rule_from_config(tmp_path):
    rules = dataclasses.replace(ClassificationConfig(), user_agent_rules=(
        UserAgentRule("our_monitor", r"^uptime-check/", "scanner"),))

    result = classify([event("c1", "click", link="l1", agent="uptime-check/2"),
                       event("o1", agent="Mozilla/5.0", recipient="r2")], rules)

    # The custom list replaced the built-in rules in this config, so bare Mozilla is human.
    assert result == {"c1": ("scanner_click", ["user_agent:our_monitor"]),
                      "o1": ("human", [])}


def write(tmp_path, text: str):
    path = tmp_path / "clicktrail.toml"
    path.write_text('[store]\nurl = "store"\n' + text)
    return str(path)


def test_config_reads_rules(tmp_path):
    config = load_config(write(tmp_path, """
[report.classification]
proxy_networks = ["gproxy"]
disable_user_agent_rules = ["bare_mozilla"]
click_window_s = 0
burst_window_s = 1.5
burst_links = 4
prefetch_window_s = 120
head_clicks = false

[[report.classification.user_agent]]
name = "our_monitor"
pattern = '^uptime-check/'
kind = "scanner"
"""))
    rules = config.report.classification

    assert rules.proxy_networks == ("gproxy",)
    assert rules.prefetch_networks == ("apple_mpp",)
    names = [rule.name for rule in rules.user_agent_rules]
    assert "bare_mozilla" not in names and names[-1] == "our_monitor"
    assert (rules.click_window_s, rules.burst_window_s, rules.burst_links,
            rules.prefetch_window_s, rules.head_clicks) == (0.0, 1.5, 4, 120.0, False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[report.classification.user_agent]]\nname = "x"\npattern = "(?<=a)b"\nkind = "scanner"\n',
         "report.classification.user_agent[0].pattern: invalid RE2 regular expression"),
        ('[[report.classification.user_agent]]\nname = "x"\npattern = "a"\nkind = "robot"\n',
         "report.classification.user_agent[0].kind: invalid value 'robot'"),
        ('[[report.classification.user_agent]]\nname = "crawler"\npattern = "a"\nkind = "scanner"\n',
         "rule names must be unique"),
        ('[report.classification]\ndisable_user_agent_rules = ["nope"]\n',
         "unknown rule 'nope'"),
        ('[report.classification]\nclick_window_s = -1\n', "out of range"),
        ('[report.classification]\nhead_clicks = "yes"\n', "expected true or false"),
        ('[report.classification]\nclick_windows = 3\n', "unknown key"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))

    assert message in str(error.value)


def test_estimated_opens_and_forwards():
    figures = Engagement("all", opens=50, unique_opens=30, opens_including_clicks=40, clicks=25,
                         unique_clickers=10, person_clicks=13, delivered=100, text_only_messages=20)

    # 40 opens over the 80 messages that could report one: 40 x 100 / 80.
    assert figures.estimated_opens == 50
    assert figures.forwards == 3
    assert (figures.reactivity.numerator, figures.reactivity.denominator) == (10, 50)
    assert (figures.raw_reactivity.numerator, figures.raw_reactivity.denominator) == (10, 40)
    assert dataclasses.replace(figures, text_only_messages=100).estimated_opens == 0
    assert dataclasses.replace(figures, text_only_messages=0).estimated_opens == 40


def test_network_name_must_be_an_ip_range(tmp_path):
    (tmp_path / "scanners.txt").write_text("127.40.94.0/24\n")
    text = ('[agent.ip_ranges]\nscanners = "scanners.txt"\n'
            '[report.classification]\nscanner_networks = ["scaners"]\n')

    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))

    assert ("report.classification.scanner_networks: 'scaners' is not a name of [agent] "
            "ip_ranges (scanners)") in str(error.value)
    # The defaults name ranges an operator may not have: they are not checked.
    assert load_config(write(tmp_path, text.replace('["scaners"]', '["scanners"]')))


def test_burst_of_one_link_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="1 would class every click as a scanner's"):
        load_config(write(tmp_path, "[report.classification]\nburst_links = 1\n"))


def test_re2_hint_only_for_look_around(tmp_path):
    def message(pattern: str) -> str:
        text = (f"[[report.classification.user_agent]]\nname = \"x\"\npattern = '{pattern}'\n"
                f'kind = "scanner"\n')
        with pytest.raises(ConfigError) as error:
            load_config(write(tmp_path, text))
        return str(error.value)

    assert "no look-around" in message("(?<=a)b")
    assert "no look-around" not in message("(unclosed")
