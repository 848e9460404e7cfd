"""Short DAG labels for planning pictures."""

from ftflow.dag import short_label, shorten


def test_short_label_uses_the_run_path_form():
    label = "configure_run\\ndataset: insecure\\nmethod: lora\\nmodel: nemo\\nseed: 42"
    assert short_label(label) == "configure_run\\nnemo/lora/insecure/seed42"
    assert short_label("report") == "report"


def test_shorten_rewrites_every_label():
    dot = '\t3[label = "prefetch_model\\nmodel: tiny", color = "0.4 0.6 0.85"];'
    assert shorten(dot) == '\t3[label = "prefetch_model\\ntiny", color = "0.4 0.6 0.85"];'
