"""Defects found by triaging mypy's report on data/encoders/evaluation/cli/service/metrics
(session 14): each reached through the public API or the command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.data import DataError, load_dataset
from xmodal.encoders import EncoderError, get_encoder

runner = CliRunner()


def _karpathy_file(tmp_path):
    doc = {"dataset": "coco", "images": [
        {"filename": f"{i}.jpg", "cocoid": i, "split": "test" if i < 3 else "train",
         "sentences": [{"raw": f"a photo number {i}"}]} for i in range(6)]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("value", [True, 5, [3]])
def test_karpathy_instances_of_the_wrong_kind_is_a_data_error(tmp_path, value):
    # instances=True ("give me the labels") was iterated as a list of files: TypeError
    path = _karpathy_file(tmp_path)
    with pytest.raises(DataError, match=r"dataset_coco\.json.*instances"):
        load_dataset(str(path), instances=value)


def test_karpathy_instances_still_takes_files(tmp_path):
    path = _karpathy_file(tmp_path)
    with pytest.raises(DataError, match="nope.json: file not found"):
        load_dataset(str(path), instances=[str(tmp_path / "nope.json")])
    assert load_dataset(str(path), instances=None).labels is None


def test_bench_data_option_instances_true_is_an_error_not_a_traceback(tmp_path):
    path = _karpathy_file(tmp_path)
    res = runner.invoke(app, ["bench", "-d", str(path), "-m", "cca", "--data-option", "instances=true"])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "instances" in res.output and "error:" in res.output


def _sbert_folder(tmp_path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True}))
    return tmp_path


@pytest.mark.parametrize("content", ["[]", "null", '"max_seq_length"'])
def test_sbert_config_not_an_object_names_the_file(tmp_path, content):
    # a sentence_bert_config.json holding a list was read with .get(): AttributeError
    folder = _sbert_folder(tmp_path)
    (folder / "sentence_bert_config.json").write_text(content)
    with pytest.raises(EncoderError, match=r"sentence_bert_config\.json.*JSON object"):
        get_encoder(f"sbert:{folder}")


@pytest.mark.parametrize("content", ["[]", "384"])
def test_sbert_pooling_config_not_an_object_names_the_file(tmp_path, content):
    folder = _sbert_folder(tmp_path)
    (folder / "1_Pooling" / "config.json").write_text(content)
    with pytest.raises(EncoderError, match=r"1_Pooling/config\.json.*JSON object"):
        get_encoder(f"sbert:{folder}")


def test_sbert_folder_with_object_configs_still_reads(tmp_path):
    folder = _sbert_folder(tmp_path)
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 64}')
    assert get_encoder(f"sbert:{folder}").dim == 8
