use super::sources::is_so_redirect;
use super::*;

fn cfg(target: usize, val_fraction: f64) -> CorpusConfig {
    CorpusConfig {
        roots: Vec::new(),
        target_bytes: target,
        val_fraction,
    }
}

/// Documents `d0`... of exactly 100 bytes each, the name first.
fn docs(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let name = format!("d{i}");
            let mut text = format!("<{name}>").into_bytes();
            text.resize(99, b'x');
            text.push(b'\n');
            (name, text)
        })
        .collect()
}

fn names_in(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split('<')
        .skip(1)
        .filter_map(|s| s.split('>').next().map(str::to_owned))
        .collect()
}

#[test]
fn roff_font_escapes_and_specials() {
    let src = "This is \\fBbold\\fR and \\fIitalic\\fP, \\f(CWcode\\f[] \\-x\\&.\n\
               \\(lqq\\(rq \\(aqa\\(aq \\(em \\(bu \\(co \\e \\s+2big\\s0 \\*(lqs\\*(rq \\[u00E9]\\(:u\\n(.g\\c\n\
               tail\\ end\\~x\n";
    assert_eq!(
        roff_to_text(src),
        "This is bold and italic, code -x. \"q\" 'a' - * (c) \\ big \"s\" éütail end x\n"
    );
}

#[test]
fn roff_alternating_fonts_and_headings() {
    let src = ".TH LS 1 2022\n.SH \"SEE ALSO\"\n.BR ls (1),\n.BI \\-\\-size= N\n.B \"two words\"\n.IR a \" b\"\n";
    assert_eq!(
        roff_to_text(src),
        "SEE ALSO\nls(1), --size=N two words a b\n"
    );
}

#[test]
fn roff_tp_tags_and_paragraphs() {
    let src = "Intro text.\n.TP\n\\fB\\-a\\fR, \\fB\\-\\-all\\fR\ndo not ignore\n.TP\n.B \\-b\nbar\n.PP\n\n\n.IP \\(bu 4\nitem\n";
    assert_eq!(
        roff_to_text(src),
        "Intro text.\n\n-a, --all\ndo not ignore\n\n-b\nbar\n\n* item\n"
    );
}

#[test]
fn roff_comments_definitions_conditionals() {
    let src = ".\\\" a comment\n'\\\" another\ntext \\\" trailing\n.de XX\n.B inside\n..\n.ig\nignored\n..\n\
               .ie n \\{\\\n.ds x y\nnroff text\n.\\}\n.el .ds x z\n.if t .B troff\n.ds Q quoted\nafter \\*Q\n.br\n.ft B\n";
    assert_eq!(roff_to_text(src), "text after quoted\n");
}

#[test]
fn roff_so_redirect() {
    assert_eq!(roff_to_text(".so man1/foo.1\n"), "");
    assert!(is_so_redirect(".\\\" generated\n.so man1/foo.1\n"));
    assert!(!is_so_redirect(".TH FOO 1\n.so man1/foo.1\n"));
}

#[test]
fn roff_mdoc() {
    let src = ".Dd March 1, 2020\n.Dt LS 1\n.Os\n.Sh NAME\n.Nm ls\n.Nd list directory contents\n.Sh SYNOPSIS\n\
               .Nm\n.Op Fl AB\n.Op Ar file ...\n.Sh DESCRIPTION\nThe\n.Nm\nutility lists files, see\n.Xr stat 2 .\n\
               .Bl -tag -width Ds\n.It Fl a\nInclude entries starting with a dot.\n.El\n";
    assert_eq!(
        roff_to_text(src),
        "NAME\nls list directory contents\n\nSYNOPSIS\nls [-AB] [file ...]\n\nDESCRIPTION\n\
         The ls utility lists files, see stat(2).\n\n-a\nInclude entries starting with a dot.\n"
    );
}

#[test]
fn roff_table() {
    let src = "Before.\n.TS\ntab(:);\nl l.\nName:Value\n_\na\\-b:T{\nlong text\nT}\n.TE\nAfter.\n";
    assert_eq!(
        roff_to_text(src),
        "Before.\nName Value\na-b\nlong text\nAfter.\n"
    );
}

#[test]
fn selection_follows_the_hash_order_and_stops_at_the_target() {
    let all = docs(20);
    let c = Corpus::from_texts(all.clone(), &cfg(350, 0.05)).unwrap();
    let mut order: Vec<String> = all.iter().map(|d| d.0.clone()).collect();
    order.sort_by_key(|n| (name_hash(n), n.clone()));
    let mut got = names_in(c.train());
    got.extend(names_in(c.val()));
    got.sort();
    let mut want = order[..4].to_vec();
    want.sort();
    assert_eq!(got, want);
    let (t, v) = c.documents();
    assert_eq!(t + v, 4);
    // Independent of the input order.
    let mut rev = all;
    rev.reverse();
    assert_eq!(
        Corpus::from_texts(rev, &cfg(350, 0.05))
            .unwrap()
            .fingerprint(),
        c.fingerprint()
    );
}

#[test]
fn split_follows_the_salted_hash() {
    let c = Corpus::from_texts(docs(2000), &cfg(usize::MAX, 0.05)).unwrap();
    let val = names_in(c.val());
    assert!(val.iter().all(|n| is_val(n, 0.05)));
    assert!(names_in(c.train()).iter().all(|n| !is_val(n, 0.05)));
    let (t, v) = c.documents();
    assert_eq!((t + v, v), (2000, val.len()));
    assert!((60..140).contains(&v), "{v} validation documents");
    // Joined with one blank line; each split in selection order.
    assert_eq!(c.val().len(), v * 100 + (v - 1));
    let mut sorted = val.clone();
    sorted.sort_by_key(|n| (name_hash(n), n.clone()));
    assert_eq!(val, sorted);
}

#[test]
fn val_and_train_are_never_empty() {
    let c = Corpus::from_texts(docs(3), &cfg(usize::MAX, 0.0)).unwrap();
    assert_eq!(c.documents(), (2, 1));
    let mut order: Vec<String> = docs(3).into_iter().map(|d| d.0).collect();
    order.sort_by_key(|n| (name_hash(n), n.clone()));
    assert_eq!(names_in(c.val()), vec![order[0].clone()]);
    let c = Corpus::from_texts(docs(3), &cfg(usize::MAX, 0.99999)).unwrap();
    assert_eq!(c.documents(), (1, 2));
    assert!(matches!(
        Corpus::from_texts(docs(1), &cfg(10, 0.05)),
        Err(ReproError::Config(_))
    ));
}

#[test]
fn fingerprint_sees_every_byte() {
    let a = Corpus::from_texts(docs(10), &cfg(usize::MAX, 0.2)).unwrap();
    let mut changed = docs(10);
    changed[3].1[50] = b'y';
    let b = Corpus::from_texts(changed, &cfg(usize::MAX, 0.2)).unwrap();
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert!(a.describe().contains(&format!("{:016x}", a.fingerprint())));
}

#[test]
fn from_file_cuts_at_a_newline() {
    let path = std::env::temp_dir().join(format!("simbal-corpus-test-{}.txt", std::process::id()));
    fs::write(&path, "line one\nline two\nline three\n").unwrap();
    let c = Corpus::from_file(&path, 0.3).unwrap();
    assert_eq!(
        (c.train(), c.val()),
        (&b"line one\nline two\n"[..], &b"line three\n"[..])
    );
    let c = Corpus::from_file(&path, 0.0).unwrap();
    assert_eq!(c.val(), b"line three\n");
    assert!(matches!(
        Corpus::from_file(&path, 1.0),
        Err(ReproError::Config(_))
    ));
    fs::write(&path, "x").unwrap();
    assert!(matches!(
        Corpus::from_file(&path, 0.5),
        Err(ReproError::Config(_))
    ));
    fs::remove_file(&path).unwrap();
    assert!(matches!(
        Corpus::from_file(&path, 0.1),
        Err(ReproError::Io { .. })
    ));
}

#[test]
fn errors_are_returned_not_panicked() {
    let missing = CorpusConfig {
        roots: vec!["/nonexistent/simbal/man".into()],
        ..cfg(1000, 0.05)
    };
    assert!(matches!(
        Corpus::from_system_docs(&missing),
        Err(ReproError::Config(_))
    ));
    let big = CorpusConfig {
        target_bytes: 6 << 20,
        ..missing.clone()
    };
    let Err(ReproError::Config(msg)) = Corpus::from_system_docs(&big) else {
        panic!("expected an error")
    };
    assert!(msg.contains("--corpus"), "{msg}");
    for vf in [1.0, -0.1, f64::NAN] {
        let bad = CorpusConfig {
            val_fraction: vf,
            ..missing.clone()
        };
        assert!(matches!(
            Corpus::from_system_docs(&bad),
            Err(ReproError::Config(_))
        ));
        assert!(matches!(
            Corpus::from_texts(docs(3), &bad),
            Err(ReproError::Config(_))
        ));
    }
    assert!(matches!(
        Corpus::from_texts(docs(3), &cfg(0, 0.1)),
        Err(ReproError::Config(_))
    ));
}

/// Reads this machine's manual pages (a 200 KB corpus); skipped where there are none.
#[test]
fn system_man_pages_small_corpus() {
    if !Path::new("/usr/share/man/man1").is_dir() {
        eprintln!("no /usr/share/man/man1: skipped");
        return;
    }
    let c = CorpusConfig {
        target_bytes: 200_000,
        ..CorpusConfig::default()
    };
    let a = Corpus::from_system_docs(&c).unwrap();
    let b = Corpus::from_system_docs(&c).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    let (t, v) = a.documents();
    assert!(t > 0 && v > 0 && !a.train().is_empty() && !a.val().is_empty());
    assert!(a.train().len() + a.val().len() >= 200_000);
    for split in [a.train(), a.val()] {
        let s = std::str::from_utf8(split).unwrap();
        assert!(!s.contains("\\f"), "font escape debris");
        assert!(s
            .chars()
            .all(|ch| !ch.is_control() || ch == '\n' || ch == '\t'));
    }
}

/// `cargo test --release -p simbal-repro --lib lm::corpus::tests::default_corpus_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn default_corpus_timing() {
    let start = std::time::Instant::now();
    let c = Corpus::from_system_docs(&CorpusConfig::default()).unwrap();
    println!("{} in {:.2?}", c.describe(), start.elapsed());
    let text = String::from_utf8_lossy(c.train());
    text.lines()
        .skip(200)
        .take(15)
        .for_each(|l| println!("| {l}"));
}

#[test]
fn families() {
    assert_eq!(family("man1/gcloud_compute_ssh.1.gz", true), "gcloud");
    assert_eq!(family("man3/SSL_CTX_new.3ssl.gz", true), "ssl");
    assert_eq!(family("man2/_exit.2.gz", true), "_exit.2.gz");
    assert_eq!(family("bash/README.gz", false), "bash");
}

#[test]
fn roff_fill_and_nofill() {
    let src = ".SH EXAMPLE\nSome text\nthat is filled.\n.nf\nkeep\n  these\n.fi\nfilled\nagain\n  indented\nafter.\n";
    assert_eq!(
        roff_to_text(src),
        "EXAMPLE\nSome text that is filled.\nkeep\n  these\nfilled again\n  indented after.\n"
    );
}
