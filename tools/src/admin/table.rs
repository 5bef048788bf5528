//! `meshca admin`'s output: the API's JSON as is, or a table with aligned columns.

use std::io::Write;

use serde_json::Value;

/// The JSON as is, or a table of `rows` with `columns` (header, JSON pointer).
pub(super) fn print(
    out: &mut impl Write,
    json: bool,
    value: &Value,
    rows: &[Value],
    columns: &[(&str, &str)],
) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{value:#}");
    }
    let cell = |row: &Value, pointer: &str| match row.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|(_, p)| cell(row, p)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(
        out,
        "{}",
        line(columns.iter().map(|(h, _)| h.to_string()).collect())
    )?;
    for row in table {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_and_show_missing_values() {
        let rows = vec![
            json!({"id": "abcd", "state": "active", "propagation": {"received": 3}}),
            json!({"id": "ef", "state": null}),
        ];
        let mut out = Vec::new();
        print(
            &mut out,
            false,
            &Value::Null,
            &rows,
            &[
                ("ID", "/id"),
                ("STATE", "/state"),
                ("RECEIVED", "/propagation/received"),
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID    STATE   RECEIVED\nabcd  active  3\nef    -       -\n"
        );
    }
}
