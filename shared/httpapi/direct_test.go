package httpapi_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/httpapi"
	"github.com/Furkan-Gulsen/reliable_messaging_system/shared/message"
)

// serveTo sends one request to h addressed to host (its Host header), with
// headers in name, value pairs.
func serveTo(h http.Handler, host, method, path, body string, headers ...string) *httptest.ResponseRecorder {
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, path, nil)
	} else {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	}
	r.Host = host
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// TestKeylessAPIServedDirectlyRefusesOtherSites: served straight from its
// listener (local mode) with no API key, the API refuses with a 403 problem
// what a web page on another site can send it: a request addressed to a
// name other than localhost (DNS rebinding: the page's own domain pointed at
// 127.0.0.1, which lets it read the answers too) and one whose Origin is a
// site other than localhost, a loopback address or the API's own address.
// The refused requests change nothing: the scheduler stays started and no
// message is stored. Requests from curl, scripts and local pages go through,
// and so do the probes' routes, whatever their Host.
func TestKeylessAPIServedDirectlyRefusesOtherSites(t *testing.T) {
	ts := newTestServer(t)
	h := httpapi.ServedDirectly(ts.h)
	if w := serveTo(h, "127.0.0.1:8080", http.MethodPost, "/scheduler/start", ""); w.Code != http.StatusOK {
		t.Fatalf("POST /scheduler/start: %d %s", w.Code, w.Body)
	}
	requests := []struct{ method, path, body string }{
		{http.MethodPost, "/scheduler/stop", ""},
		{http.MethodPost, "/messages", body(phone, "from another site")},
		{http.MethodGet, "/messages", ""},
	}
	refused := []struct {
		name, host string
		headers    []string
	}{
		{"a domain rebound to 127.0.0.1", "attacker.example:8080", nil},
		{"a domain without a port", "attacker.example", nil},
		{"a domain that looks like an address", "127.0.0.1.nip.io:8080", nil},
		{"a subdomain of localhost", "evil.localhost:8080", nil},
		{"a page on another site", "127.0.0.1:8080", []string{"Origin", "https://attacker.example"}},
		{"a page on another site, to localhost", "localhost:8080", []string{"Origin", "http://attacker.example:8080"}},
		{"a page on another site's address", "127.0.0.1:8080", []string{"Origin", "http://203.0.113.7"}},
		{"a sandboxed page", "127.0.0.1:8080", []string{"Origin", "null"}},
		{"a browser extension", "127.0.0.1:8080", []string{"Origin", "chrome-extension://abcdefghijklmnop"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			for _, req := range requests {
				w := serveTo(h, tc.host, req.method, req.path, req.body, tc.headers...)
				p := readProblem(t, w, http.StatusForbidden, "")
				if !strings.Contains(p.Detail, "API_KEY") || !strings.Contains(p.Detail, "localhost") {
					t.Errorf("%s %s: detail %q does not say to use localhost or set API_KEY", req.method, req.path, p.Detail)
				}
				if p.RequestID == "" || w.Header().Get("X-Request-Id") != p.RequestID {
					t.Errorf("%s %s: the 403 has no request id", req.method, req.path)
				}
			}
		})
	}
	if !strings.Contains(ts.logs.String(), "status=403") {
		t.Errorf("the refused requests are not logged:\n%s", ts.logs)
	}
	st := decodeJSON[map[string]any](t, serveTo(h, "localhost", http.MethodGet, "/scheduler", ""))
	if st["state"] != string(message.SchedulerStarted) {
		t.Errorf("after the refused requests the scheduler is %v, want started", st["state"])
	}
	if p := decodeJSON[message.Page](t, serveTo(h, "localhost", http.MethodGet, "/messages", "")); len(p.Items) != 0 {
		t.Errorf("the refused requests stored %d messages", len(p.Items))
	}

	allowed := []struct {
		name, host string
		headers    []string
	}{
		{"localhost", "localhost:8080", nil},
		{"localhost in capitals, no port", "LOCALHOST", nil},
		{"an IPv4 address", "127.0.0.1:8080", nil},
		{"an IPv6 address", "[::1]:8080", nil},
		{"the machine's address on its network", "192.168.1.5:8080", nil},
		{"no Host (HTTP/1.0)", "", nil},
		{"a page on localhost", "localhost:8080", []string{"Origin", "http://localhost:3000"}},
		{"a page on a loopback address", "127.0.0.1:8080", []string{"Origin", "http://127.0.0.1:5173"}},
		{"a page on IPv6 loopback", "[::1]:8080", []string{"Origin", "http://[::1]:8080"}},
		{"a page on the API's own address", "192.168.1.5:8080", []string{"Origin", "http://192.168.1.5:3000"}},
	}
	for _, tc := range allowed {
		t.Run(tc.name, func(t *testing.T) {
			for _, req := range requests {
				if w := serveTo(h, tc.host, req.method, req.path, req.body, tc.headers...); w.Code >= 300 {
					t.Errorf("%s %s: %d %s", req.method, req.path, w.Code, w.Body)
				}
			}
		})
	}
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		for _, path := range []string{"/status", "/livez"} {
			if w := serveTo(h, "api:8080", method, path, "", "Origin", "https://attacker.example"); w.Code != http.StatusOK {
				t.Errorf("%s %s by a service name: %d %s, want 200", method, path, w.Code, w.Body)
			}
		}
	}
}

// TestSiteChecksNeedNoKeyAndADirectListener: the Host and Origin checks are
// for a keyless API served directly. With a key, a page on another site
// cannot send it (the header takes a CORS preflight, which the API never
// grants), so any name serves; and the handler as the API Lambda function
// serves it, behind API Gateway (which checks the key) and addressed to its
// domain, has no such checks.
func TestSiteChecksNeedNoKeyAndADirectListener(t *testing.T) {
	const key = "the-key"
	keyed := newTestServer(t, func(o *httpapi.Options) { o.APIKey = key })
	h := httpapi.ServedDirectly(keyed.h)
	if w := serveTo(h, "api.example.com", http.MethodGet, "/messages", "", "X-API-Key", key, "Origin", "https://app.example.com"); w.Code != http.StatusOK {
		t.Errorf("with the key, by name, from another site: %d %s, want 200", w.Code, w.Body)
	}
	readProblem(t, serveTo(h, "api.example.com", http.MethodGet, "/messages", ""), http.StatusUnauthorized, "")

	gateway := newTestServer(t)
	w := serveTo(gateway.h, "a1b2c3d4e5.execute-api.eu-central-1.amazonaws.com", http.MethodPost, "/messages", body(phone, "through API Gateway"))
	if w.Code != http.StatusAccepted {
		t.Errorf("not served directly, no key, by API Gateway's domain: %d %s, want 202", w.Code, w.Body)
	}
}

// TestLoopbackAddr: the local API warns at start when it has no key and
// listens where other machines reach it; LoopbackAddr tells the two apart.
func TestLoopbackAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8080": true,
		"127.1.2.3:8080": true,
		"localhost:8080": true,
		"[::1]:8080":     true,
		":8080":          false,
		"0.0.0.0:8080":   false,
		"[::]:8080":      false,
		"10.0.0.5:8080":  false,
		"api:8080":       false,
	} {
		if got := httpapi.LoopbackAddr(addr); got != want {
			t.Errorf("LoopbackAddr(%q) = %v, want %v", addr, got, want)
		}
	}
}
