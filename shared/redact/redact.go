// Package redact makes connection strings and URLs safe to log. It does not
// trust a URL to be well formed: a password with an unescaped '/', '?',
// '#' or '@' (common in generated passwords) makes url.Parse, and a
// redaction built on it, read part of the password as the host or path.
package redact

import (
	"net/url"
	"strings"
)

// Mask replaces every secret.
const Mask = "REDACTED"

// safeQuery lists the connection-string options whose values are kept;
// every other option's value is masked, since some carry secrets
// (tlsCertificateKeyFilePassword, the session token in
// authMechanismProperties, ...). Endpoint masks a query whole.
var safeQuery = map[string]bool{
	"appname": true, "authmechanism": true, "authsource": true, "connecttimeoutms": true,
	"directconnection": true, "heartbeat": true, "maxpoolsize": true, "readpreference": true,
	"replicaset": true, "retrywrites": true, "serverselectiontimeoutms": true, "ssl": true,
	"tls": true, "w": true,
}

// URL returns raw safe to log: the password masked (and the user too when
// it cannot be told from the password: a redis:// URL's lone name is its
// password), every query value not in safeQuery masked (and a key with no
// value whole) and any fragment masked. Everything up to the last '@' counts as the user part, so a
// password holding '/', '?' or '#' is masked whole; a path or query with
// an '@' in it is then masked too, which errs on the safe side. A string
// without "://" (host:port) is kept, up to its last '@'.
func URL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		if at := strings.LastIndexByte(raw, '@'); at >= 0 {
			return Mask + raw[at:]
		}
		return raw
	}
	var b strings.Builder
	b.WriteString(scheme + "://")
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		b.WriteString(userInfo(scheme, rest[:at]) + "@")
		rest = rest[at+1:]
	}
	rest, fragment, hasFragment := strings.Cut(rest, "#")
	rest, query, hasQuery := strings.Cut(rest, "?")
	b.WriteString(rest)
	if hasQuery {
		b.WriteString("?" + maskQuery(query))
	}
	if hasFragment && fragment != "" {
		b.WriteString("#" + Mask)
	}
	return b.String()
}

// Endpoint masks more than URL, for a URL that may hold a token anywhere
// (a webhook's): its whole user part (a token is often the user name of
// basic auth, with no password), its path beyond "/" (Slack, Discord and
// many others put the token there), its whole query, keys included (a
// token may be a bare key), and its fragment. The scheme and host stay,
// but for a URL with an '@' past its authority, whose host is in doubt.
func Endpoint(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return URL(raw)
	}
	var b strings.Builder
	b.WriteString(scheme + "://")
	// The authority ends at the first '/', '?' or '#'. An '@' after it
	// leaves the host in doubt (a password with an unescaped '/' puts
	// part of itself before the host): then the host is masked too.
	end := len(rest)
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		end = i
	}
	if strings.Contains(rest[end:], "@") {
		return b.String() + Mask
	}
	if at := strings.LastIndexByte(rest[:end], '@'); at >= 0 {
		b.WriteString(Mask + "@")
		rest = rest[at+1:]
	}
	rest, fragment, hasFragment := strings.Cut(rest, "#")
	rest, query, hasQuery := strings.Cut(rest, "?")
	host, path, hasPath := strings.Cut(rest, "/")
	b.WriteString(host)
	if hasPath {
		b.WriteString("/")
		if path != "" {
			b.WriteString(Mask)
		}
	}
	if hasQuery && query != "" {
		b.WriteString("?" + Mask)
	}
	if hasFragment && fragment != "" {
		b.WriteString("#" + Mask)
	}
	return b.String()
}

// userInfo masks the password of a URL's user part.
func userInfo(scheme, u string) string {
	if strings.ContainsAny(u, "/?#@") {
		return Mask
	}
	if name, _, hasPassword := strings.Cut(u, ":"); hasPassword {
		return name + ":" + Mask
	}
	if s := strings.ToLower(scheme); s == "redis" || s == "rediss" {
		return Mask
	}
	return u
}

// maskQuery masks the value of every option not in safeQuery, and a key
// without a value whole (it may be a token itself). The options keep their
// order and their escaping. A query that does not parse is masked whole.
func maskQuery(query string) string {
	if _, err := url.ParseQuery(query); err != nil {
		return Mask
	}
	pairs := strings.Split(query, "&")
	for i, pair := range pairs {
		k, _, hasValue := strings.Cut(pair, "=")
		key, _ := url.QueryUnescape(k) // ParseQuery took it
		switch {
		case pair == "" || safeQuery[strings.ToLower(key)]:
		case hasValue:
			pairs[i] = k + "=" + Mask
		default:
			pairs[i] = Mask
		}
	}
	return strings.Join(pairs, "&")
}

// Password returns the password in raw's user part, read the way URL reads
// it, or "" if it has none.
func Password(raw string) string {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return ""
	}
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return ""
	}
	_, pw, _ := strings.Cut(rest[:at], ":")
	return pw
}

// Scrub returns s with every appearance of raw's password, and of each of
// its pieces between characters a URL parser splits on, masked: a driver
// error may quote the password or the part of it that it took for a host.
// Pieces shorter than 4 characters are left, as they would mask too much
// of the text around them.
func Scrub(s, raw string) string {
	pw := Password(raw)
	if pw == "" {
		return s
	}
	pieces := append([]string{pw}, strings.FieldsFunc(pw, func(r rune) bool { return strings.ContainsRune("/?#@:%", r) })...)
	for _, p := range pieces {
		if len(p) >= 4 {
			s = strings.ReplaceAll(s, p, Mask)
		}
	}
	return s
}
