//! A synthetic corpus in the shapes web corpora ship in (FineWeb-style Parquet shards with a `text`
//! column, and zstd JSONL), for measuring `tritium data prepare` at scale without a download.
//!
//! `cargo run --release -p tritium-train --example make_corpus -- OUT_DIR [MEGABYTES] [SEED]`
//!
//! Documents are 1–12 paragraphs of the bundled TinyStories sample drawn at random (seeded), so the
//! text tokenizes like real English prose. Half the bytes go to `part-NNNN.parquet` (zstd pages,
//! row groups of 2048 rows, plus an `id` column), half to `part-NNNN.jsonl.zst`; each file holds
//! about 128 MB of text. Memory stays at one row group.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use tritium_train::data::splitmix64;
use tritium_train::text::documents;

const FILE_BYTES: usize = 128 << 20;
const ROW_GROUP: usize = 2048;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        return Err("usage: make_corpus OUT_DIR [MEGABYTES] [SEED]".into());
    };
    let total: usize = args.get(1).map_or(Ok(2000), |s| s.parse())? * 1_000_000;
    let seed: u64 = args.get(2).map_or(Ok(1), |s| s.parse())?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/tinystories");
    let mut paragraphs = documents(&root.join("train_head.txt.gz"))?;
    paragraphs.extend(documents(&root.join("valid_head.txt.gz"))?);
    std::fs::create_dir_all(&out)?;
    let mut rng = seed;
    let mut next = move || {
        rng = splitmix64(rng);
        rng
    };
    let mut document = || {
        let n = 1 + (next() % 12) as usize;
        let parts: Vec<&str> = (0..n)
            .map(|_| paragraphs[(next() % paragraphs.len() as u64) as usize].as_str())
            .collect();
        parts.join("\n\n")
    };
    let (mut written, mut part, mut id) = (0usize, 0usize, 0i64);
    while written < total {
        let budget = FILE_BYTES.min(total - written);
        let path = if part % 2 == 0 {
            out.join(format!("part-{part:04}.parquet"))
        } else {
            out.join(format!("part-{part:04}.jsonl.zst"))
        };
        let mut bytes = 0;
        if part % 2 == 0 {
            let schema = Arc::new(parse_message_type(
                "message doc { required int64 id; required binary text (UTF8); }",
            )?);
            let props = Arc::new(
                WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                    .build(),
            );
            let mut w = SerializedFileWriter::new(std::fs::File::create(&path)?, schema, props)?;
            while bytes < budget {
                let docs: Vec<String> = (0..ROW_GROUP).map(|_| document()).collect();
                bytes += docs.iter().map(|d| d.len()).sum::<usize>();
                let ids: Vec<i64> = (id..id + docs.len() as i64).collect();
                id += docs.len() as i64;
                let mut group = w.next_row_group()?;
                let mut col = group.next_column()?.ok_or("id column")?;
                col.typed::<Int64Type>().write_batch(&ids, None, None)?;
                col.close()?;
                let mut col = group.next_column()?.ok_or("text column")?;
                let values: Vec<ByteArray> = docs.iter().map(|d| d.as_str().into()).collect();
                col.typed::<ByteArrayType>()
                    .write_batch(&values, None, None)?;
                col.close()?;
                group.close()?;
            }
            w.close()?;
        } else {
            let mut w = zstd::stream::write::Encoder::new(std::fs::File::create(&path)?, 3)?;
            while bytes < budget {
                let d = document();
                bytes += d.len();
                serde_json::to_writer(&mut w, &serde_json::json!({ "id": id, "text": d }))?;
                w.write_all(b"\n")?;
                id += 1;
            }
            w.finish()?;
        }
        written += bytes;
        part += 1;
        eprintln!("{}: {:.0} MB of text", path.display(), bytes as f64 / 1e6);
    }
    println!(
        "{}: {part} files, {:.0} MB of text, {id} documents",
        out.display(),
        written as f64 / 1e6
    );
    Ok(())
}
