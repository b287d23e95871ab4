//! Postgres statements that act on the connection itself, which the Postgres
//! wire runs instead of DataFusion: cursors (`DECLARE … CURSOR FOR`, `FETCH`,
//! `MOVE`, `CLOSE`) and `COPY … TO STDOUT`.
//!
//! DataFusion has no cursors and no `COPY` to the client; what drivers build
//! on them (psycopg's named cursors, pandas chunked reads, connectorx,
//! polars, ADBC, psql's `\copy`) needs both. `COPY … TO 'file'` stays a
//! DataFusion statement and is not parsed here.

use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::parser::{char_position, expect_word, parse_name, parse_word, SourceText};

/// A statement about the connection's own state.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionStatement {
    /// `DECLARE name [BINARY] [NO] [SCROLL] CURSOR [WITH[OUT] HOLD] FOR query`.
    Declare(Declare),
    /// `FETCH [direction] [FROM|IN] name`, or `MOVE …` (the same, without rows).
    Fetch(Fetch),
    /// `CLOSE name` or `CLOSE ALL` (`None`).
    Close(Option<String>),
    /// `COPY (query) TO STDOUT …` or `COPY table [(columns)] TO STDOUT …`.
    CopyTo(CopyTo),
}

impl ConnectionStatement {
    /// The statement's command name, as Postgres's command tags spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectionStatement::Declare(_) => "DECLARE CURSOR",
            ConnectionStatement::Fetch(f) if f.discard => "MOVE",
            ConnectionStatement::Fetch(_) => "FETCH",
            ConnectionStatement::Close(_) => "CLOSE CURSOR",
            ConnectionStatement::CopyTo(_) => "COPY",
        }
    }
}

/// A cursor declaration.
#[derive(Debug, Clone, PartialEq)]
pub struct Declare {
    /// The cursor's name (lower-cased unless quoted).
    pub name: String,
    /// The query's exact text.
    pub query: String,
    /// 0-based character offset of `query` in the whole query string.
    pub query_offset: usize,
    /// `BINARY`: the simple protocol's `FETCH` answers in binary.
    pub binary: bool,
    /// `WITH HOLD`: the cursor outlives the transaction that declared it.
    pub hold: bool,
    /// `SCROLL` was asked for (fedsql's cursors only move forward).
    pub scroll: bool,
}

/// `FETCH` or `MOVE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetch {
    /// The cursor's name.
    pub name: String,
    /// Which rows.
    pub direction: FetchDirection,
    /// `MOVE`: position the cursor, return no rows.
    pub discard: bool,
}

/// Where a `FETCH` goes, in Postgres's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchDirection {
    /// The next `n` rows (`NEXT`, `FORWARD n`, plain `n`).
    Forward(i64),
    /// Every remaining row (`ALL`, `FORWARD ALL`).
    All,
    /// The row at 1-based position `n` (`ABSOLUTE n`; `FIRST` is 1).
    Absolute(i64),
    /// The `n`th row after the current one (`RELATIVE n`).
    Relative(i64),
    /// `LAST`.
    Last,
    /// Any backward move (`PRIOR`, `BACKWARD …`).
    Backward,
}

/// `COPY … TO STDOUT`.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyTo {
    /// The query whose rows are copied (`SELECT … FROM table` for a table).
    pub query: String,
    /// 0-based character offset of `query` in the whole query string (for a
    /// table, of the table's name).
    pub query_offset: usize,
    /// Text, CSV or binary.
    pub format: CopyFormat,
    /// `HEADER` (CSV only, as in Postgres).
    pub header: bool,
    /// `DELIMITER` (tab for text, comma for CSV by default).
    pub delimiter: Option<char>,
    /// `NULL` (`\N` for text, an empty string for CSV by default).
    pub null: Option<String>,
    /// `QUOTE` (CSV; `"` by default).
    pub quote: Option<char>,
    /// `ESCAPE` (CSV; the quote character by default).
    pub escape: Option<char>,
    /// `FORCE_QUOTE`: the columns always quoted (CSV).
    pub force_quote: ForceQuote,
}

/// COPY's data format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// Tab-separated, backslash escapes.
    Text,
    /// RFC 4180-style CSV.
    Csv,
    /// PGCOPY binary.
    Binary,
}

/// Which CSV columns are always quoted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ForceQuote {
    /// Only values that need it.
    #[default]
    None,
    /// `FORCE_QUOTE *`.
    All,
    /// The named columns.
    Columns(Vec<String>),
}

/// Whether the leading words (upper-cased) start a connection statement.
pub(crate) fn is_connection_statement(words: &[String]) -> bool {
    matches!(
        words.first().map(String::as_str),
        Some("DECLARE" | "FETCH" | "MOVE" | "CLOSE" | "COPY")
    )
}

/// Parses a connection statement; `Ok(None)` when it is not one after all
/// (a `COPY` to or from a file, which is DataFusion's).
pub(crate) fn parse_connection_statement(
    p: &mut Parser<'_>,
    text: &SourceText<'_>,
) -> Result<Option<ConnectionStatement>, ParserError> {
    if parse_word(p, "DECLARE") {
        return parse_declare(p, text).map(|d| Some(ConnectionStatement::Declare(d)));
    }
    if parse_word(p, "FETCH") {
        return parse_fetch(p, false).map(|f| Some(ConnectionStatement::Fetch(f)));
    }
    if parse_word(p, "MOVE") {
        return parse_fetch(p, true).map(|f| Some(ConnectionStatement::Fetch(f)));
    }
    if parse_word(p, "CLOSE") {
        if p.parse_keyword(Keyword::ALL) {
            return Ok(Some(ConnectionStatement::Close(None)));
        }
        return Ok(Some(ConnectionStatement::Close(Some(parse_name(p)?))));
    }
    expect_word(p, "COPY")?;
    Ok(parse_copy(p, text)?.map(ConnectionStatement::CopyTo))
}

fn parse_declare(p: &mut Parser<'_>, text: &SourceText<'_>) -> Result<Declare, ParserError> {
    let name = parse_name(p)?;
    let binary = parse_word(p, "BINARY");
    let _ = parse_word(p, "ASENSITIVE") || parse_word(p, "INSENSITIVE");
    let scroll = if parse_word(p, "NO") {
        expect_word(p, "SCROLL")?;
        false
    } else {
        parse_word(p, "SCROLL")
    };
    expect_word(p, "CURSOR")?;
    let hold = if p.parse_keyword(Keyword::WITH) {
        expect_word(p, "HOLD")?;
        true
    } else if parse_word(p, "WITHOUT") {
        expect_word(p, "HOLD")?;
        false
    } else {
        false
    };
    p.expect_keyword(Keyword::FOR)?;
    let start = p.peek_token().span.start;
    p.parse_query()?;
    let end = p.get_current_token().span.end;
    let (from, to) = (text.byte(start), text.byte(end));
    Ok(Declare {
        name,
        query: text.sql[from..to].to_string(),
        query_offset: char_position(text.sql, start).unwrap_or(0),
        binary,
        hold,
        scroll,
    })
}

fn parse_fetch(p: &mut Parser<'_>, discard: bool) -> Result<Fetch, ParserError> {
    let direction = if parse_word(p, "NEXT") {
        FetchDirection::Forward(1)
    } else if parse_word(p, "PRIOR") {
        FetchDirection::Backward
    } else if parse_word(p, "FIRST") {
        FetchDirection::Absolute(1)
    } else if parse_word(p, "LAST") {
        FetchDirection::Last
    } else if parse_word(p, "ABSOLUTE") {
        FetchDirection::Absolute(parse_count(p)?)
    } else if parse_word(p, "RELATIVE") {
        FetchDirection::Relative(parse_count(p)?)
    } else if p.parse_keyword(Keyword::ALL) {
        FetchDirection::All
    } else if parse_word(p, "FORWARD") {
        if p.parse_keyword(Keyword::ALL) {
            FetchDirection::All
        } else if next_is_count(p) {
            FetchDirection::Forward(parse_count(p)?)
        } else {
            FetchDirection::Forward(1)
        }
    } else if parse_word(p, "BACKWARD") {
        if !p.parse_keyword(Keyword::ALL) && next_is_count(p) {
            parse_count(p)?;
        }
        FetchDirection::Backward
    } else if next_is_count(p) {
        FetchDirection::Forward(parse_count(p)?)
    } else {
        FetchDirection::Forward(1)
    };
    // A negative count moves backward, as in Postgres.
    let direction = match direction {
        FetchDirection::Forward(n) if n < 0 => FetchDirection::Backward,
        other => other,
    };
    let _ = p.parse_keyword(Keyword::FROM) || p.parse_keyword(Keyword::IN);
    let name = parse_name(p)?;
    Ok(Fetch {
        name,
        direction,
        discard,
    })
}

fn next_is_count(p: &Parser<'_>) -> bool {
    matches!(
        p.peek_token().token,
        Token::Number(..) | Token::Minus | Token::Plus
    )
}

fn parse_count(p: &mut Parser<'_>) -> Result<i64, ParserError> {
    let negative = if p.consume_token(&Token::Minus) {
        true
    } else {
        let _ = p.consume_token(&Token::Plus);
        false
    };
    let token = p.next_token();
    match &token.token {
        Token::Number(n, _) => match n.parse::<i64>() {
            Ok(v) => Ok(if negative { -v } else { v }),
            Err(_) => p.expected("a row count", token),
        },
        _ => p.expected("a row count", token),
    }
}

/// `COPY`'s body; `None` unless the target is `STDOUT`.
fn parse_copy(p: &mut Parser<'_>, text: &SourceText<'_>) -> Result<Option<CopyTo>, ParserError> {
    let (query, query_offset) = if p.consume_token(&Token::LParen) {
        let start = p.peek_token().span.start;
        p.parse_query()?;
        let end = p.get_current_token().span.end;
        p.expect_token(&Token::RParen)?;
        (
            text.sql[text.byte(start)..text.byte(end)].to_string(),
            char_position(text.sql, start).unwrap_or(0),
        )
    } else {
        let start = p.peek_token().span.start;
        let table = p.parse_object_name(false)?;
        let columns = p.parse_parenthesized_column_list(
            datafusion::sql::sqlparser::parser::IsOptional::Optional,
            false,
        )?;
        let select = if columns.is_empty() {
            "*".to_string()
        } else {
            columns
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        (
            format!("SELECT {select} FROM {table}"),
            char_position(text.sql, start).unwrap_or(0),
        )
    };
    if !p.parse_keyword(Keyword::TO) || !parse_word(p, "STDOUT") {
        return Ok(None);
    }
    let mut copy = CopyTo {
        query,
        query_offset,
        format: CopyFormat::Text,
        header: false,
        delimiter: None,
        null: None,
        quote: None,
        escape: None,
        force_quote: ForceQuote::None,
    };
    let with = p.parse_keyword(Keyword::WITH);
    if p.consume_token(&Token::LParen) {
        parse_copy_options(p, &mut copy)?;
    } else {
        parse_legacy_copy_options(p, &mut copy)?;
    }
    if with && p.peek_token().token == Token::LParen {
        return p.expected("end of statement", p.peek_token());
    }
    Ok(Some(copy))
}

/// `( option [value], … )`, the form Postgres documents since 9.0.
fn parse_copy_options(p: &mut Parser<'_>, copy: &mut CopyTo) -> Result<(), ParserError> {
    loop {
        let token = p.next_token();
        let Token::Word(word) = &token.token else {
            return p.expected("a COPY option", token);
        };
        match word.value.to_ascii_uppercase().as_str() {
            "FORMAT" => {
                let format = p.next_token();
                copy.format = match &format.token {
                    Token::Word(w) if w.value.eq_ignore_ascii_case("text") => CopyFormat::Text,
                    Token::Word(w) if w.value.eq_ignore_ascii_case("csv") => CopyFormat::Csv,
                    Token::Word(w) if w.value.eq_ignore_ascii_case("binary") => CopyFormat::Binary,
                    Token::SingleQuotedString(s) if s.eq_ignore_ascii_case("text") => {
                        CopyFormat::Text
                    }
                    Token::SingleQuotedString(s) if s.eq_ignore_ascii_case("csv") => {
                        CopyFormat::Csv
                    }
                    Token::SingleQuotedString(s) if s.eq_ignore_ascii_case("binary") => {
                        CopyFormat::Binary
                    }
                    _ => return p.expected("text, csv or binary", format),
                };
            }
            "HEADER" => copy.header = parse_optional_bool(p)?,
            "DELIMITER" => copy.delimiter = Some(parse_char(p)?),
            "NULL" => copy.null = Some(p.parse_literal_string()?),
            "QUOTE" => copy.quote = Some(parse_char(p)?),
            "ESCAPE" => copy.escape = Some(parse_char(p)?),
            "ENCODING" => {
                let encoding = p.parse_literal_string()?;
                if !encoding.eq_ignore_ascii_case("utf8") && !encoding.eq_ignore_ascii_case("utf-8")
                {
                    return Err(ParserError::ParserError(format!(
                        "COPY ENCODING '{encoding}' is not supported: fedsql sends UTF8"
                    )));
                }
            }
            "FORCE_QUOTE" => copy.force_quote = parse_force_quote(p)?,
            other => {
                return Err(ParserError::ParserError(format!(
                    "option \"{}\" not recognized for COPY TO",
                    other.to_ascii_lowercase()
                )))
            }
        }
        if p.consume_token(&Token::RParen) {
            return Ok(());
        }
        p.expect_token(&Token::Comma)?;
    }
}

/// The options before 9.0 (`BINARY`, `CSV HEADER`, `DELIMITER AS ','`, …),
/// which psql, connectorx and older drivers still send.
fn parse_legacy_copy_options(p: &mut Parser<'_>, copy: &mut CopyTo) -> Result<(), ParserError> {
    loop {
        if parse_word(p, "BINARY") {
            copy.format = CopyFormat::Binary;
        } else if parse_word(p, "CSV") {
            copy.format = CopyFormat::Csv;
        } else if parse_word(p, "HEADER") {
            copy.header = true;
        } else if parse_word(p, "DELIMITER") {
            let _ = p.parse_keyword(Keyword::AS);
            copy.delimiter = Some(parse_char(p)?);
        } else if p.parse_keyword(Keyword::NULL) {
            let _ = p.parse_keyword(Keyword::AS);
            copy.null = Some(p.parse_literal_string()?);
        } else if parse_word(p, "QUOTE") {
            let _ = p.parse_keyword(Keyword::AS);
            copy.quote = Some(parse_char(p)?);
        } else if parse_word(p, "ESCAPE") {
            let _ = p.parse_keyword(Keyword::AS);
            copy.escape = Some(parse_char(p)?);
        } else if parse_word(p, "FORCE") {
            expect_word(p, "QUOTE")?;
            copy.force_quote = parse_force_quote(p)?;
        } else {
            return Ok(());
        }
    }
}

fn parse_optional_bool(p: &mut Parser<'_>) -> Result<bool, ParserError> {
    let token = p.peek_token();
    let value = match &token.token {
        Token::Word(w) => match w.value.to_ascii_lowercase().as_str() {
            "true" | "on" => Some(true),
            "false" | "off" => Some(false),
            _ => None,
        },
        Token::Number(n, _) if n == "1" => Some(true),
        Token::Number(n, _) if n == "0" => Some(false),
        _ => None,
    };
    match value {
        Some(v) => {
            p.next_token();
            Ok(v)
        }
        None => Ok(true),
    }
}

fn parse_char(p: &mut Parser<'_>) -> Result<char, ParserError> {
    let token = p.peek_token();
    let s = p.parse_literal_string()?;
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii() => Ok(c),
        _ => p.expected("a single one-byte character", token),
    }
}

fn parse_force_quote(p: &mut Parser<'_>) -> Result<ForceQuote, ParserError> {
    if p.consume_token(&Token::Mul) {
        return Ok(ForceQuote::All);
    }
    let parenthesized = p.consume_token(&Token::LParen);
    let mut columns = vec![parse_name(p)?];
    while p.consume_token(&Token::Comma) {
        columns.push(parse_name(p)?);
    }
    if parenthesized {
        p.expect_token(&Token::RParen)?;
    }
    Ok(ForceQuote::Columns(columns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse, Statement};

    fn connection(sql: &str) -> ConnectionStatement {
        match parse(sql).unwrap().remove(0) {
            Statement::Connection { statement, .. } => statement,
            other => panic!("not a connection statement: {other:?}"),
        }
    }

    #[test]
    fn declare_keeps_the_query_text_and_its_offset() {
        let sql = r#"SELECT 1; DECLARE "C1" NO SCROLL CURSOR WITH HOLD FOR SELECT a  FROM t"#;
        let statements = parse(sql).unwrap();
        let Statement::Connection {
            statement: ConnectionStatement::Declare(d),
            ..
        } = &statements[1]
        else {
            panic!("{statements:?}")
        };
        assert_eq!(d.name, "C1");
        assert_eq!(d.query, "SELECT a  FROM t");
        assert_eq!(&sql[d.query_offset..], "SELECT a  FROM t");
        assert!(d.hold && !d.binary && !d.scroll);
        let ConnectionStatement::Declare(d) = connection("declare c binary cursor for values (1)")
        else {
            panic!()
        };
        assert!(d.binary && !d.hold);
        assert_eq!(d.name, "c");
    }

    #[test]
    fn fetch_directions() {
        let direction = |sql: &str| match connection(sql) {
            ConnectionStatement::Fetch(f) => (f.direction, f.discard, f.name),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            direction(r#"FETCH FORWARD 10 FROM "c_1""#),
            (FetchDirection::Forward(10), false, "c_1".into())
        );
        assert_eq!(direction("FETCH c").0, FetchDirection::Forward(1));
        assert_eq!(direction("FETCH NEXT IN c").0, FetchDirection::Forward(1));
        assert_eq!(direction("FETCH 5 c").0, FetchDirection::Forward(5));
        assert_eq!(direction("FETCH ALL FROM c").0, FetchDirection::All);
        assert_eq!(direction("FETCH FORWARD ALL FROM c").0, FetchDirection::All);
        assert_eq!(
            direction("FETCH ABSOLUTE 3 FROM c").0,
            FetchDirection::Absolute(3)
        );
        assert_eq!(
            direction("FETCH RELATIVE -2 FROM c").0,
            FetchDirection::Relative(-2)
        );
        assert_eq!(direction("FETCH -1 FROM c").0, FetchDirection::Backward);
        assert_eq!(direction("FETCH PRIOR FROM c").0, FetchDirection::Backward);
        assert_eq!(
            direction("MOVE 7 FROM c"),
            (FetchDirection::Forward(7), true, "c".into())
        );
        assert!(parse("FETCH FORWARD x y").is_err());
    }

    #[test]
    fn close() {
        assert_eq!(connection("CLOSE ALL"), ConnectionStatement::Close(None));
        assert_eq!(
            connection("close C"),
            ConnectionStatement::Close(Some("c".into()))
        );
    }

    #[test]
    fn copy_to_stdout_in_both_option_styles() {
        let sql = "COPY (SELECT a, 'x;y' FROM t) TO STDOUT (FORMAT csv, HEADER, DELIMITER ';', FORCE_QUOTE *)";
        let ConnectionStatement::CopyTo(c) = connection(sql) else {
            panic!()
        };
        assert_eq!(c.query, "SELECT a, 'x;y' FROM t");
        assert_eq!(&sql[c.query_offset..c.query_offset + 6], "SELECT");
        assert_eq!(c.format, CopyFormat::Csv);
        assert!(c.header);
        assert_eq!(c.delimiter, Some(';'));
        assert_eq!(c.force_quote, ForceQuote::All);

        let ConnectionStatement::CopyTo(c) = connection("COPY (SELECT 1) TO STDOUT BINARY") else {
            panic!()
        };
        assert_eq!(c.format, CopyFormat::Binary);
        let ConnectionStatement::CopyTo(c) =
            connection(r#"COPY bank."Odd" (a, "B") TO STDOUT WITH CSV HEADER NULL AS 'nil'"#)
        else {
            panic!()
        };
        assert_eq!(c.query, r#"SELECT a, "B" FROM bank."Odd""#);
        assert_eq!((c.format, c.header), (CopyFormat::Csv, true));
        assert_eq!(c.null.as_deref(), Some("nil"));
        let ConnectionStatement::CopyTo(c) =
            connection("COPY (SELECT 1) TO STDOUT WITH (FORMAT binary)")
        else {
            panic!()
        };
        assert_eq!(c.format, CopyFormat::Binary);
    }

    #[test]
    fn copy_to_a_file_stays_with_datafusion() {
        assert!(matches!(
            parse("COPY (SELECT 1) TO 'out.parquet'").unwrap()[0],
            Statement::Sql { .. }
        ));
        assert!(parse("COPY (SELECT 1) TO STDOUT (FORMAT xml)").is_err());
        assert!(parse("COPY (SELECT 1) TO STDOUT (OIDS)").is_err());
    }
}
