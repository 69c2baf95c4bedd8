package com.example.shouter;

import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.kafka.support.converter.RecordMessageConverter;
import org.springframework.kafka.support.converter.StringJacksonJsonMessageConverter;

/** JSON payloads: Spring Boot hands this converter to the listeners and the template. */
@Configuration(proxyBeanMethods = false)
class JsonConfig {

    @Bean
    RecordMessageConverter jsonConverter() {
        return new StringJacksonJsonMessageConverter();
    }
}
