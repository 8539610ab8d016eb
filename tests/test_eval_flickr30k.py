"""Flickr30K Entities' released layout read as region captions: one item per entity with one box, its ground truth
every phrase naming it; the training mixture's reg source answers its boxes with a phrase and no mask."""

import numpy as np
import pytest
from PIL import Image

from anyref.batching import collate, prepare
from eval import cli as eval_cli
from eval.datasets import Flickr30kReader
from train.data import Mixture

SENTENCES = """[/EN#10/people A man] in [/EN#12/clothing a hat] holds [/EN#11/other two cups] .
[/EN#10/people The man] and [/EN#13/animals a dog] watch [/EN#0/notvisual each other] .
[/EN#10/people A man] sits by [/EN#14/animals his pet] .
"""

ANNOTATIONS = """<annotation><filename>1.jpg</filename><size><width>64</width><height>48</height><depth>3</depth></size>
<object><name>10</name><bndbox><xmin>3</xmin><ymin>5</ymin><xmax>20</xmax><ymax>40</ymax></bndbox></object>
<object><name>11</name><bndbox><xmin>30</xmin><ymin>10</ymin><xmax>34</xmax><ymax>14</ymax></bndbox></object>
<object><name>11</name><bndbox><xmin>36</xmin><ymin>10</ymin><xmax>40</xmax><ymax>14</ymax></bndbox></object>
<object><name>12</name><nobndbox>1</nobndbox><scene>0</scene></object>
<object><name>13</name><name>14</name><bndbox><xmin>41</xmin><ymin>21</ymin><xmax>70</xmax><ymax>47</ymax></bndbox></object>
</annotation>
"""


def write_flickr30k(root):
    """flickr30k_entities/ (test.txt, Sentences/, Annotations/) with flickr30k-images/ beside it: one image."""
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root.parent / "flickr30k-images").mkdir()
    Image.fromarray(np.full((48, 64, 3), 60, np.uint8)).save(root.parent / "flickr30k-images" / "1.jpg")
    (root / "Sentences" / "1.txt").write_text(SENTENCES)
    (root / "Annotations" / "1.xml").write_text(ANNOTATIONS)
    (root / "test.txt").write_text("1\n")
    return root


def test_one_item_per_single_box_entity_with_all_its_phrases(tmp_path):
    reader = Flickr30kReader(write_flickr30k(tmp_path / "flickr30k_entities"), "test")
    samples = list(reader)
    # entity 11 has two boxes, 12 none, 0 is not visual; 13 and 14 share one box
    assert [s.meta["entity"] for s in samples] == ["10", "13", "14"]
    man = samples[0]
    assert man.meta["sentences"] == ["A man", "The man"] and man.answer == ["A man"] and man.task == "describe"
    assert man.references[0].as_tuple() == (2.0, 4.0, 20.0, 40.0)  # 1-based inclusive -> pixel corners
    assert samples[1].references[0].as_tuple() == (40.0, 20.0, 64.0, 47.0)  # clipped to the 64-wide image
    assert samples[2].meta["sentences"] == ["his pet"] and man.masks.shape == (0, 48, 64)


def test_errors_name_what_to_fix(tmp_path, capsys):
    root = write_flickr30k(tmp_path / "flickr30k_entities")
    with pytest.raises(FileNotFoundError, match="split file"):
        Flickr30kReader(root, "val")
    with pytest.raises(FileNotFoundError, match=r"\{image_id\}.jpg"):
        Flickr30kReader(root, "test", images=tmp_path)
    (root / "Annotations" / "1.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="annotations.zip unpacked whole"):
        Flickr30kReader(root, "test")
    code = eval_cli.main(["reg", "--model", "unused", "--data", str(root), "--dataset", "flickr30k", "--split-by",
                          "unc", "--no-progress"])
    assert code == 2 and "leave out --split-by" in capsys.readouterr().err


def test_reg_source_answers_flickr_boxes_with_a_phrase_and_no_mask(tiny_model, tmp_path):
    root = write_flickr30k(tmp_path / "flickr30k_entities")
    mix = Mixture({"flickr30k": {"source": "reg", "dataset": "flickr30k", "data": str(root), "split": "test"}}, 0)
    assert mix.reference_kinds() == {"box"}
    samples = [mix.sample(i) for i in range(12)]
    assert {s.answer[0] for s in samples if s.meta["entity"] == "10"} <= {"A man", "The man"}
    assert all(s.answer[-1] == "." and s.masks.shape[0] == 0 for s in samples)
    batch = collate([prepare(s, tiny_model.builder) for s in samples[:4]], tiny_model.ids.pad)
    assert batch.input_ids.shape[0] == 4
