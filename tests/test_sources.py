"""Loading raw records: every supported format, and one-line errors that name the file and line."""

import json

import datasets
import pytest

from instructune.data.sources import load_records, record_location, record_locations
from instructune.fileio.jsonio import read_jsonl
from instructune.errors import InstructuneError

ROWS = [{"instruction": "Say hi", "input": "", "output": "Hi"}, {"instruction": "Add", "input": "1+1", "output": "2"}]


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


class TestLoadRecords:
    def test_jsonl(self, tmp_path):
        path = write_jsonl(tmp_path / "a.jsonl", [json.dumps(row) for row in ROWS])
        dataset = load_records(path)
        assert isinstance(dataset, datasets.Dataset)
        assert dataset.to_list() == ROWS

    def test_keys_the_first_record_lacks_are_kept(self, tmp_path):
        # datasets' from_list keeps only the first row's keys: a later row's "input" would vanish silently.
        rows = [{"instruction": "Say hi", "output": "Hi"}, ROWS[1]]
        path = write_jsonl(tmp_path / "a.jsonl", [json.dumps(row) for row in rows])
        assert load_records(path).to_list() == [{**rows[0], "input": None}, ROWS[1]]

    def test_jsonl_skips_blank_lines(self, tmp_path):
        path = write_jsonl(tmp_path / "a.jsonl", [json.dumps(ROWS[0]), "", "  ", json.dumps(ROWS[1])])
        assert len(load_records(path)) == 2

    def test_json_array_and_wrapped_array(self, tmp_path):
        (tmp_path / "a.json").write_text(json.dumps(ROWS))
        (tmp_path / "b.json").write_text(json.dumps({"data": ROWS}))
        assert load_records(tmp_path / "a.json").to_list() == ROWS
        assert load_records(tmp_path / "b.json").to_list() == ROWS

    def test_csv_keeps_empty_cells_as_empty_strings(self, tmp_path):
        datasets.Dataset.from_list(ROWS).to_csv(str(tmp_path / "a.csv"), index=False)
        assert load_records(tmp_path / "a.csv")[0]["input"] == ""

    def test_parquet(self, tmp_path):
        datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "a.parquet"))
        assert load_records(tmp_path / "a.parquet").to_list() == ROWS

    def test_saved_dataset_and_dataset_dict(self, tmp_path):
        datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
        assert len(load_records(tmp_path / "single")) == 2
        splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                                       "test": datasets.Dataset.from_list(ROWS[:1])})
        splits.save_to_disk(str(tmp_path / "dict"))
        assert len(load_records(tmp_path / "dict", split="test")) == 1
        with pytest.raises(InstructuneError, match="choose a split from: test, train"):
            load_records(tmp_path / "dict")

    def test_folder_of_split_files(self, tmp_path):
        write_jsonl(tmp_path / "train.jsonl", [json.dumps(row) for row in ROWS])
        write_jsonl(tmp_path / "validation.jsonl", [json.dumps(ROWS[0])])
        assert len(load_records(tmp_path, split="validation")) == 1
        with pytest.raises(InstructuneError, match="split 'dev'"):
            load_records(tmp_path, split="dev")


class TestErrors:
    def test_missing_file_names_it(self, tmp_path):
        with pytest.raises(InstructuneError, match=r"nope\.jsonl: no such file"):
            load_records(tmp_path / "nope.jsonl")

    def test_malformed_line_names_file_and_line(self, tmp_path):
        path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(ROWS[0]), "", '{"instruction": "x",'])
        with pytest.raises(InstructuneError, match=r"bad\.jsonl:3: not valid JSON") as caught:
            load_records(path)
        assert "\n" not in str(caught.value)

    def test_non_object_line(self, tmp_path):
        path = write_jsonl(tmp_path / "list.jsonl", [json.dumps(ROWS[0]), "[1, 2]"])
        with pytest.raises(InstructuneError, match=r"list\.jsonl:2: expected a JSON object"):
            read_jsonl(path)

    def test_empty_file(self, tmp_path):
        (tmp_path / "empty.jsonl").write_text("\n")
        with pytest.raises(InstructuneError, match="no records"):
            load_records(tmp_path / "empty.jsonl")

    @pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
    def test_bytes_that_are_not_utf8_name_the_file_line_and_byte_offset(self, tmp_path, suffix):
        # Issue 12 item 1: Latin-1 text ("café" with a lone 0xE9) was a UnicodeDecodeError traceback.
        first = {".jsonl": b'{"instruction": "a", "input": "", "output": "b"}\n',
                 ".json": b'[{"instruction": "a", "input": "", "output": "b"},\n',
                 ".csv": b"instruction,input,output\n"}[suffix]
        second = {".jsonl": b'{"instruction": "caf\xe9", "input": "", "output": "b"}\n',
                  ".json": b' {"instruction": "caf\xe9", "input": "", "output": "b"}]\n',
                  ".csv": b"caf\xe9,,b\n"}[suffix]
        path = tmp_path / f"latin1{suffix}"
        path.write_bytes(first + second)
        offset = len(first) + second.index(b"\xe9")
        with pytest.raises(InstructuneError) as caught:
            load_records(path)
        assert str(caught.value) == (f"{path}:2: not UTF-8 text (byte 0xe9 at byte offset {offset}); "
                                     "save the file as UTF-8")

    def test_a_utf8_byte_order_mark_is_not_part_of_the_first_record(self, tmp_path):
        path = tmp_path / "bom.jsonl"
        path.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[0]).encode() + b"\n")
        assert load_records(path).to_list() == ROWS[:1]

    def test_a_field_whose_type_clashes_names_row_and_field(self, tmp_path):
        chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
        rows = [json.dumps(chat)] * 5 + ["", json.dumps({"messages": "hello"})] + [json.dumps(chat)] * 3
        path = write_jsonl(tmp_path / "chat.jsonl", rows)
        with pytest.raises(InstructuneError, match=rf"^{path}:7: field 'messages' has another type than in the records before it \("):
            load_records(path)

    def test_unsupported_suffix(self, tmp_path):
        (tmp_path / "a.txt").write_text("hello")
        with pytest.raises(InstructuneError, match="unsupported file type '.txt'"):
            load_records(tmp_path / "a.txt")


class TestRecordLocation:
    def test_counts_blank_lines_like_an_editor(self, tmp_path):
        path = write_jsonl(tmp_path / "a.jsonl", [json.dumps(ROWS[0]), "", json.dumps(ROWS[1])])
        assert record_location(path, 0) == f"{path}:1"
        assert record_location(path, 1) == f"{path}:3"

    def test_many_rows_in_one_pass(self, tmp_path):
        path = write_jsonl(tmp_path / "a.jsonl", [json.dumps(ROWS[0]), "", json.dumps(ROWS[1]), json.dumps(ROWS[0])])
        assert record_locations(path, [2, 0]) == [f"{path}:4", f"{path}:1"]
        assert record_locations(path, [1]) == [record_location(path, 1)]

    def test_other_formats_give_record_number(self, tmp_path):
        assert record_location(tmp_path / "a.csv", 4) == f"{tmp_path / 'a.csv'} record 5"

    def test_real_data(self, shared_data):
        dataset = load_records(shared_data / "piqa", split="validation")
        assert dataset.column_names == ["goal", "sol1", "sol2", "label"]
        assert len(dataset) == 1838
