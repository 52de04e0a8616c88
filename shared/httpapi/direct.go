package httpapi

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// servedDirectlyKey marks, in a request's context, a request that a process
// of this system took straight from its own listener (see ServedDirectly).
type servedDirectlyKey struct{}

// ServedDirectly returns h, a handler from NewServer, for a process that
// serves it straight from its own listener, with no gateway in front: the
// local mode's API. When h has no API key, it then answers only requests a
// web page on another site cannot make (see guardKeyless).
//
// The API Lambda function does not use it, although it sets no API key
// either: there every request comes through API Gateway, which checks the
// key, and its Host is API Gateway's domain.
func ServedDirectly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), servedDirectlyKey{}, true)
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// guardKeyless protects an API that has no key and is served directly
// (ServedDirectly) from web pages on other sites, as development servers
// such as Jupyter's and Vite's do. Without a key anyone who can reach the
// address may use the API, and a browser is one that can: a page on another
// site can POST to http://127.0.0.1:8080 (a POST without a JSON body needs
// no CORS preflight), and, by pointing its own domain at 127.0.0.1 (DNS
// rebinding), it can even read the answers, since they are then same-origin.
//
// So a request is refused (403) when its Host names neither localhost nor an
// IP address, which the rebound domain always does, or when it has an Origin
// naming a site other than localhost, a loopback address or the host the
// request is addressed to. Browsers send Origin with every cross-origin
// request but a plain GET, and a page cannot change Host or Origin. The
// check allows a page on a loopback address or on the API's own address,
// and not one on any other IP address: a page served from an address the
// attacker owns would pass an "any IP address" rule.
//
// With a key the checks are off: a page cannot add the key's header without
// a CORS preflight, which this API never grants. The probes' routes (GET
// /status, GET /livez) are left out, so that a probe may call the API by a
// container's or service's name; without a key they show no error text and
// change nothing.
func guardKeyless(apiKey string, next http.Handler) http.Handler {
	if apiKey != "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if direct, _ := r.Context().Value(servedDirectlyKey{}).(bool); !direct || probe(r) {
			next.ServeHTTP(w, r)
			return
		}
		host := hostOf(r.Host)
		if host != "" && !localName(host) {
			writeStatusProblem(w, r, http.StatusForbidden,
				"without an API key this API answers only requests addressed to localhost or an IP address: "+
					"use http://localhost or http://127.0.0.1, or set API_KEY to serve it under a name")
			return
		}
		if origin, ok := r.Header["Origin"]; ok && !sameSiteOrigin(origin, host) {
			writeStatusProblem(w, r, http.StatusForbidden,
				"without an API key this API answers no request from a web page on another site (Origin): "+
					"call it from localhost, or set API_KEY")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// hostOf returns the host of a Host header ("host", "host:port", "[::1]" or
// "[::1]:port"), without brackets or port.
func hostOf(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
}

// localName reports whether host is localhost or an IP address: names a web
// page on another site cannot send a browser to, even by DNS rebinding,
// which needs a domain of its own.
func localName(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

// sameSiteOrigin reports whether the Origin header values name a page that
// may call a keyless API addressed to host: one on localhost, on a loopback
// address or on host itself when host is an IP address. "null" (a sandboxed
// frame, a file) and a repeated header are refused.
func sameSiteOrigin(values []string, host string) bool {
	if len(values) != 1 {
		return false
	}
	u, err := url.Parse(values[0])
	if err != nil || u.Host == "" {
		return false
	}
	name := u.Hostname()
	if loopbackName(name) {
		return true
	}
	a, err := netip.ParseAddr(name)
	if err != nil {
		return false
	}
	b, err := netip.ParseAddr(host)
	return err == nil && a.Unmap() == b.Unmap()
}

// loopbackName reports whether host is localhost or a loopback IP address.
func loopbackName(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// LoopbackAddr reports whether a listen address (API_ADDR, "host:port")
// takes connections from this machine only: its host is localhost or a
// loopback IP address. An empty host, as in ":8080", listens everywhere.
func LoopbackAddr(addr string) bool { return loopbackName(hostOf(addr)) }
