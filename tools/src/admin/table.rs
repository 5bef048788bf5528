//! `meshca admin`'s output: the API's JSON as is, or a table of views with aligned columns.

use std::io::Write;

use serde_json::Value;

/// A column: its header, and a row's cell (`None`, a value the row lacks, shows as `-`).
pub(super) type Column<T> = (&'static str, fn(&T) -> Option<String>);

/// The JSON as the server sent it, or a table of `rows` with `columns`.
pub(super) fn print<T>(
    out: &mut impl Write,
    json: bool,
    value: &Value,
    rows: &[T],
    columns: &[Column<T>],
) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{value:#}");
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|(_, cell)| cell(row).unwrap_or_else(|| "-".into()))
                .collect()
        })
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
    use super::*;

    struct Row {
        id: &'static str,
        state: Option<&'static str>,
        received: Option<usize>,
    }

    #[test]
    fn tables_align_and_show_missing_values() {
        let rows = [
            Row {
                id: "abcd",
                state: Some("active"),
                received: Some(3),
            },
            Row {
                id: "ef",
                state: None,
                received: None,
            },
        ];
        let columns: &[Column<Row>] = &[
            ("ID", |r| Some(r.id.to_string())),
            ("STATE", |r| r.state.map(str::to_string)),
            ("RECEIVED", |r| r.received.map(|n| n.to_string())),
        ];
        let mut out = Vec::new();
        print(&mut out, false, &Value::Null, &rows, columns).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ID    STATE   RECEIVED\nabcd  active  3\nef    -       -\n"
        );

        let mut out = Vec::new();
        let json = serde_json::json!({"b": 1, "a": [true]});
        print(&mut out, true, &json, &rows, columns).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{json:#}\n"));
    }
}
